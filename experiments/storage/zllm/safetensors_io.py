"""Streaming reader and validator for ``.safetensors`` files, without loading tensors into memory.

A safetensors file is ``u64 little-endian N`` + ``N`` bytes of JSON header + a data section; each header entry
gives a tensor's dtype, shape and ``data_offsets`` relative to the data section. :func:`read_layout` checks
all of it against the file size and returns the file as an ordered list of byte ranges (header, tensors, and
any gap or trailing bytes), so the store can rebuild the file byte for byte. Tensor bytes are then read
through :func:`open_mmap` as zero-copy numpy views.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SafetensorsFormatError

# Bytes per element of the safetensors dtypes.
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8,
}
# A header larger than this is certainly corrupt (the reference implementation caps it at 100 MB too).
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; ``start``/``end`` are absolute offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Segment:
    """A byte range of a file: ``kind`` is ``header``, ``tensor`` or ``raw`` (padding / trailing bytes)."""

    kind: str
    start: int
    end: int
    tensor: TensorEntry | None = None


@dataclass(frozen=True)
class SafetensorsLayout:
    path: Path
    size: int
    header_end: int
    tensors: tuple[TensorEntry, ...]
    segments: tuple[Segment, ...]


def is_safetensors_name(path: str | os.PathLike) -> bool:
    return str(path).endswith(".safetensors")


def _bad(path: Path, what: str) -> SafetensorsFormatError:
    return SafetensorsFormatError(
        f"{path}: not a valid safetensors file: {what}. Re-download or regenerate the file, or remove it "
        f"from the directory to ingest.")


def read_layout(path: str | os.PathLike) -> SafetensorsLayout:
    """Parse and validate the header of ``path``; raise :class:`SafetensorsFormatError` naming the problem."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _bad(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES or header_len > size - 8:
            raise _bad(path, f"header length {header_len} exceeds the file size {size} (truncated/corrupt)")
        raw_header = f.read(header_len)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _bad(path, "header JSON is not an object")
    header_end = 8 + header_len
    data_len = size - header_end
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _bad(path, f"entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise _bad(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise _bad(path, f"tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise _bad(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if end > data_len:
            raise _bad(path, f"tensor {name!r} declares bytes [{begin}, {end}) of the data section but it "
                             f"holds only {data_len} bytes (file truncated?)")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise _bad(path, f"tensor {name!r} spans {end - begin} bytes but dtype {dtype} and shape {shape} "
                             f"need {expected}")
        tensors.append(TensorEntry(name, dtype, tuple(shape), header_end + begin, header_end + end))
    tensors.sort(key=lambda t: (t.start, t.end))
    segments = [Segment("header", 0, header_end)]
    cursor = header_end
    for t in tensors:
        if t.start < cursor:
            raise _bad(path, f"tensor {t.name!r} overlaps the previous tensor")
        if t.start > cursor:
            segments.append(Segment("raw", cursor, t.start))
        segments.append(Segment("tensor", t.start, t.end, t))
        cursor = t.end
    if cursor < size:
        segments.append(Segment("raw", cursor, size))
    return SafetensorsLayout(path, size, header_end, tuple(tensors), tuple(segments))


class MappedFile:
    """A read-only memory map of a file; ``view(start, end)`` returns a zero-copy uint8 numpy array."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        self._array = (np.frombuffer(self._map, dtype=np.uint8) if self._map is not None
                       else np.zeros(0, dtype=np.uint8))

    def view(self, start: int, end: int) -> np.ndarray:
        if end > self.size:
            raise SafetensorsFormatError(f"{self.path}: file shrank while being read (wanted byte {end}, "
                                         f"size {self.size}); do not modify files during ingest")
        return self._array[start:end]

    def close(self) -> None:
        # Drop the numpy view before closing the map, otherwise mmap refuses ("exported pointers exist").
        self._array = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a caller still holds a view; the map is freed when that view goes
        self._file.close()

    def __enter__(self) -> MappedFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_mmap(path: str | os.PathLike) -> MappedFile:
    return MappedFile(path)
