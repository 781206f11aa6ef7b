"""The bottom layer: configs, the name registry and the version; imports nothing else of sgl."""
