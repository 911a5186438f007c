"""The package's layering: the kernel side and the cluster side share only ``notebookos.common`` (and the small
top-level modules), never each other's internals; the policies stay pure (no network, no event loop), as the
simulator runs them too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "notebookos"


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Absolute names of the notebookos modules (and third-party top-level names) ``path`` imports, anywhere in it
    (imports inside functions count too)."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def offenders(subpackage: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    return found


def test_the_import_scan_sees_relative_and_nested_imports(tmp_path):
    # The scan itself must catch what the layering rules forbid, or the tests below could not fail.
    probe = tmp_path / "notebookos" / "kernel" / "front" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from ...scheduler.client import X\n    from .. import protocol\n")
    names = imported_modules(probe, root=tmp_path)
    assert "notebookos.scheduler.client" in names
    assert "notebookos.kernel.protocol" in names


@pytest.mark.parametrize("side, other", [("kernel", "notebookos.scheduler"), ("scheduler", "notebookos.kernel")])
def test_kernel_and_scheduler_do_not_import_each_other(side, other):
    assert offenders(side, (other,)) == []


def test_common_imports_neither_side():
    assert offenders("common", ("notebookos.kernel", "notebookos.scheduler")) == []


def test_policies_stay_pure():
    assert offenders("scheduler/policies", ("tornado", "asyncio", "zmq", "notebookos.scheduler.service",
                                            "notebookos.scheduler.hostd", "notebookos.common")) == []
