"""Our own decoder models and their loader.

- ``loader``: ``load_model(path | None) -> LoadedModel`` (HF dir or GGUF file),
  ``default_model_path()`` (the bundled SmolLM2-135M-Instruct GGUF).
- ``gguf_convert``: one-time GGUF -> HF directory conversion into a cache.
- ``registry``: ``get_model_class(config.architectures)``.
- ``llama`` / ``qwen2``: ``*ForCausalLM`` modules over the paged KV pool.
- ``layers``: fused linears with weight loaders, RMSNorm, RoPE, the SiLU-gated MLP projection.
"""
