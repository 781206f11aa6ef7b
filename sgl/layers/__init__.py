"""Model building blocks: linear layers with weight loaders, norms, rotary embeddings, activations,
and the attention backends that read and write the paged KV pool (``sgl.layers.attention``)."""
