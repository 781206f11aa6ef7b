"""HTTP server: SGLang's native protocol and the OpenAI-compatible API over an ``sgl.Engine``.

- :func:`sgl.server.app.create_app` builds the FastAPI app;
- :func:`sgl.server.serve.serve` runs it with uvicorn (``python -m sgl.launch`` serve mode);
- :class:`sgl.server.serve.BackgroundServer` serves from a thread (tests, notebooks);
- ``python -m sgl.server key=value ...`` composes the config, builds the engine and serves.
"""
