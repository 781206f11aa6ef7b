"""The package version (one place; ``sgl.__version__`` and ``/get_server_info`` read it)."""

__version__ = "0.1.0"
