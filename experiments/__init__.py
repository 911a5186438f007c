"""Bundled experiments that reproduce research systems on the notebookos platform (see experiments/README.md)."""
