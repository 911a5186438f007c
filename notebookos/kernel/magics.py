"""The ``%replicas`` line magic: :func:`notebookos.kernel.replicas` as a table."""

from __future__ import annotations

from typing import Any

from . import REPLICA_FIELDS, replicas


class ReplicaTable(list):
    """The rows of ``replicas()``, shown as a plain-text or HTML table."""

    def _cells(self) -> list[list[str]]:
        return [[str(row.get(key, "")) for key in REPLICA_FIELDS] for row in self]

    def __repr__(self) -> str:
        rows = [list(REPLICA_FIELDS), *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(REPLICA_FIELDS))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{k}</th>" for k in REPLICA_FIELDS)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def replicas_magic(line: str = "") -> Any:
    """%replicas: show this kernel's replicas (id, pid, host, Raft role, last executor, alive, applied index)."""
    return ReplicaTable(replicas())


def register_magics(shell: Any) -> None:
    shell.register_magic_function(replicas_magic, "line", "replicas")
