"""``python -m notebookos.scheduler.sim``: the ``notebookos sim`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
