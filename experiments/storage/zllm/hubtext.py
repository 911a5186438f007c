"""Training text for the synthetic model hub, taken only from the local CPython standard library.

Every machine that runs the experiment has the standard library installed, so its sources and the bundled
documentation (``pydoc_data/topics.py``, ``LICENSE.txt``) give several distinct text domains without any
download. Files are picked deterministically (sorted relative paths, fixed byte budgets), so the same Python
installation always yields the same bytes; a different CPython version yields different (equally valid) text.

Domains:

* ``stdlib_code_forward`` / ``stdlib_code_reverse`` / ``stdlib_code_middle``: ``.py`` sources read from the
  start, the end and the middle of the sorted file list (disjoint for realistic budgets), one per base family;
* ``python_docs``: the language reference topics bundled for ``pydoc`` (every other topic);
* ``license_and_docs``: ``LICENSE.txt`` followed by the remaining pydoc topics;
* ``docs_qa``: the pydoc topics rewritten as question/answer pairs, an "instruction tuning" style corpus.
"""

from __future__ import annotations

import os
import sysconfig
from functools import cache
from pathlib import Path

TEXT_DOMAINS = (
    "stdlib_code_forward",
    "stdlib_code_reverse",
    "stdlib_code_middle",
    "python_docs",
    "license_and_docs",
    "docs_qa",
)

# Directories under the stdlib path that are not part of CPython itself (installed packages, caches).
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_dir() -> Path:
    """The directory holding the pure-Python standard library of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


@cache
def _sorted_stdlib_sources() -> tuple[Path, ...]:
    """All ``.py`` files of the standard library, sorted by their path relative to the stdlib directory."""
    root = stdlib_dir()
    found: list[tuple[str, Path]] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if name not in _EXCLUDED_DIRS]
        for name in files:
            if name.endswith(".py"):
                path = Path(directory, name)
                found.append((path.relative_to(root).as_posix(), path))
    if not found:
        raise RuntimeError(f"no Python sources found under the standard library directory {root}")
    return tuple(path for _, path in sorted(found))


def _read_files_until(paths: list[Path] | tuple[Path, ...], budget: int) -> bytes:
    """Concatenate files in the given order until ``budget`` bytes are collected (the last one truncated)."""
    chunks: list[bytes] = []
    collected = 0
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError:
            continue  # an unreadable file is skipped the same way on every run of this installation
        chunks.append(data[: budget - collected])
        collected += len(chunks[-1])
        if collected >= budget:
            break
    return b"".join(chunks)


@cache
def _pydoc_topics() -> tuple[tuple[str, str], ...]:
    """The (topic, text) pairs that ``pydoc`` ships for the language reference, sorted by topic."""
    from pydoc_data.topics import topics

    return tuple(sorted(topics.items()))


def _repeat_to_budget(data: bytes, budget: int) -> bytes:
    """Cycle a small corpus so that every domain can fill the requested budget."""
    if not data:
        raise RuntimeError("empty text domain")
    repeats = -(-budget // len(data))
    return (data * repeats)[:budget]


def domain_text(domain: str, budget: int) -> bytes:
    """Exactly ``budget`` bytes of the named text domain (deterministic for a given Python installation)."""
    if budget <= 0:
        raise ValueError(f"text budget must be positive, got {budget}")
    sources = _sorted_stdlib_sources()
    if domain == "stdlib_code_forward":
        data = _read_files_until(sources, budget)
    elif domain == "stdlib_code_reverse":
        data = _read_files_until(sources[::-1], budget)
    elif domain == "stdlib_code_middle":
        data = _read_files_until(sources[len(sources) // 2 :], budget)
    elif domain == "python_docs":
        data = "\n\n".join(text for _, text in _pydoc_topics()[0::2]).encode()
    elif domain == "license_and_docs":
        license_path = stdlib_dir() / "LICENSE.txt"
        license_text = license_path.read_bytes() if license_path.is_file() else b""
        data = license_text + "\n\n".join(text for _, text in _pydoc_topics()[1::2]).encode()
    elif domain == "docs_qa":
        pairs = []
        for topic, text in _pydoc_topics():
            answer = text.strip().split("\n\n", 2)
            pairs.append(f"### Question: What is `{topic}` in Python?\n### Answer: {' '.join(answer[:2])}\n\n")
        data = "".join(pairs).encode()
    else:
        raise ValueError(f"unknown text domain {domain!r}; expected one of {', '.join(TEXT_DOMAINS)}")
    return _repeat_to_budget(data, budget)
