"""``python -m notebookos``: the ``notebookos`` command."""

from notebookos.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
