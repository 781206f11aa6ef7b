"""sgl: structured LLM programs on a pure-PyTorch serving runtime."""
