"""``python -m notebookos.kernel.front -f CONNECTION_FILE``: run a replicated kernel's front."""

from .app import main

main()
