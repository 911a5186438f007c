"""Which names a cell may have changed, from its code: the identifiers it mentions, and the globals of the
cell-defined functions and classes it mentions (transitively), which it may have changed by calling them."""

from __future__ import annotations

import logging
import re
import types
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_MISSING = object()
# Over the raw text, so IPython magics and shell escapes (which are not Python) do not get in the way.
_IDENTIFIER = re.compile(r"[^\W\d]\w*")


def _code_names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_names(const)


def mentioned(code: str, ns: dict[str, Any]) -> set[str]:
    """Identifiers in the code, plus the globals that cell-defined functions and classes it names use."""
    found: set[str] = set()
    work = list(set(_IDENTIFIER.findall(code)))
    seen_codes: set[int] = set()
    seen_types: set[int] = set()
    while work:
        name = work.pop()
        if name in found:
            continue
        found.add(name)
        obj = ns.get(name, _MISSING)
        if obj is _MISSING or isinstance(obj, types.ModuleType):
            continue
        try:
            codes = list(_codes_of(obj, ns, seen_types))
        except Exception:  # odd user types (proxies, broken descriptors) only lose this refinement
            log.debug("could not inspect %r for the globals it uses", name, exc_info=True)
            continue
        for code_obj in codes:
            if id(code_obj) not in seen_codes:
                seen_codes.add(id(code_obj))
                work.extend(n for n in _code_names(code_obj) if n not in found and n in ns)
    return found

def _codes_of(obj: Any, ns: dict[str, Any], seen_types: set[int]) -> Iterator[types.CodeType]:
    if isinstance(obj, types.MethodType):
        obj = obj.__func__
    if isinstance(obj, types.FunctionType):
        if obj.__globals__ is ns:
            yield obj.__code__
        return
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        if id(klass) in seen_types or klass.__module__ == "builtins":
            continue
        seen_types.add(id(klass))
        for attr in list(vars(klass).values()):
            if isinstance(attr, property):
                funcs: tuple[Any, ...] = (attr.fget, attr.fset, attr.fdel)
            elif isinstance(attr, staticmethod | classmethod):
                funcs = (attr.__func__,)
            else:
                funcs = (attr,)
            for f in funcs:
                if isinstance(f, types.FunctionType) and f.__globals__ is ns:
                    yield f.__code__
