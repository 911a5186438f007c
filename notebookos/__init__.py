"""notebookos: replicated Jupyter kernels that bind GPUs only while a cell runs."""

__version__ = "0.1.0"
