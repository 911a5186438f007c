"""BitX and the other codecs of the store, with the self-describing blob format they write.

BitX (zLLM, arXiv:2505.06252) compresses a fine-tuned 16-bit float tensor against its base: XOR the 16-bit
words of both (fine-tunes change mostly low mantissa bits, so the XOR is mostly zero bits), split the XOR into
an exponent byte stream and a sign+mantissa stream, and zstd each stream. The bit layouts:

* bf16 is ``s eeeeeeee mmmmmmm`` (1-8-7): exponent byte = bits 14..7; sign+mantissa byte = ``s mmmmmmm``.
* fp16 is ``s eeeee mmmmmmmmmm`` (1-5-10): the exponent is not byte aligned, so its 5 bits go alone into the
  low bits of one byte (the top 3 are zero and cost zstd almost nothing); the 11 sign+mantissa bits go into
  two byte planes, ``00000 s mm`` (sign and the top 2 mantissa bits) and the low 8 mantissa bits, so the
  plane that a small fine-tune leaves almost all zero is contiguous for zstd.

The same split with an all-zero base (codec ``split16``) is byte grouping in the style of ZipNN, used for
16-bit float tensors without a base; 4- and 8-byte dtypes are stored as byte planes (``planes``), everything
else as plain zstd. Tensors are encoded in fixed chunks of ``CHUNK_BYTES`` so memory stays bounded
whatever the tensor size; chunk ``i`` of a fine-tune pairs with chunk ``i`` of its base.

Blob layout: ``HEADER`` (magic, codec, dtype code, raw size, chunk size, base key) then per chunk ``u8 n``,
``n x u32`` compressed stream lengths and the streams.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import zstandard

from .errors import StoreCorruptionError

MAGIC = b"ZLB1"
# 1 MiB chunks: a multiple of 8 (every dtype's elements stay whole within a chunk), and small enough that the
# numpy temporaries stay in cache and reuse freed memory; 8 MiB chunks measured 2-3x slower from page faults.
CHUNK_BYTES = 1 << 20
ZSTD_LEVEL = 3  # plain zstd (headers, configs, other dtypes), as the zstd-3 baseline
# Split streams: zstd level 1 measured the same ratio as level 3 on BitX streams (mantissa bytes are nearly
# random, so matching finds nothing; the gain is Huffman on literals) at 2.4x the speed.
SPLIT_LEVEL = 1
HEADER = struct.Struct("<4sBBHQI32s")  # magic, codec, dtype code, reserved, raw bytes, chunk bytes, base key

CODEC_ZSTD, CODEC_SPLIT16, CODEC_BITX, CODEC_PLANES = 0, 1, 2, 3
CODEC_NAMES = {CODEC_ZSTD: "zstd", CODEC_SPLIT16: "split16", CODEC_BITX: "bitx", CODEC_PLANES: "planes"}
DTYPE_CODES = {name: i for i, name in enumerate(
    ["", "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2", "F8_E8M0", "U16", "I16", "F16", "BF16",
     "U32", "I32", "F32", "U64", "I64", "F64"])}
DTYPE_NAMES = {i: name for name, i in DTYPE_CODES.items()}
BITX_DTYPES = ("BF16", "F16")

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe; one per thread and level, reused across calls.
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    c = cache.get(level)
    if c is None:
        if level == SPLIT_LEVEL:
            # min_match 7: on exponent streams zstd's short matches cost more than they save (measured 5%
            # smaller on bf16 weights, within 4% of the order-0 entropy), and fewer matches search faster
            params = zstandard.ZstdCompressionParameters.from_level(level, min_match=7)
            c = cache[level] = zstandard.ZstdCompressor(compression_params=params)
        else:
            c = cache[level] = zstandard.ZstdCompressor(level=level)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


# --- the bit split ---

def split_words(words: np.ndarray, dtype: str) -> list[np.ndarray]:
    """Split uint16 words into byte streams.

    bf16 -> [exponent, sign+mantissa]; fp16 -> [exponent, sign + top 2 mantissa bits, low 8 mantissa bits].
    """
    if dtype == "BF16":
        exponent = (words >> 7).astype(np.uint8)  # astype keeps the low 8 bits: exponent bits 14..7
        sign_mantissa = ((words >> 8) & 0x80).astype(np.uint8) | (words & 0x7F).astype(np.uint8)
        return [exponent, sign_mantissa]
    if dtype == "F16":
        exponent = ((words >> 10) & 0x1F).astype(np.uint8)
        sign_mantissa_hi = ((words >> 13) & 0x04).astype(np.uint8) | ((words >> 8) & 0x03).astype(np.uint8)
        mantissa_lo = words.astype(np.uint8)
        return [exponent, sign_mantissa_hi, mantissa_lo]
    raise ValueError(f"no 16-bit float split for dtype {dtype}")


def join_words(streams: list[np.ndarray], dtype: str) -> np.ndarray:
    """Inverse of :func:`split_words`."""
    if dtype == "BF16":
        exponent, sign_mantissa = streams
        words = exponent.astype(np.uint16)
        words <<= 7
        words |= (sign_mantissa & 0x80).astype(np.uint16) << 8
        words |= sign_mantissa & 0x7F
        return words
    if dtype == "F16":
        exponent, hi, lo = streams
        words = exponent.astype(np.uint16)
        words <<= 10
        words |= (hi & 0x04).astype(np.uint16) << 13
        words |= (hi & 0x03).astype(np.uint16) << 8
        words |= lo
        return words
    raise ValueError(f"no 16-bit float split for dtype {dtype}")


def bitx_streams(fine: np.ndarray, base: np.ndarray | None, dtype: str) -> list[np.ndarray]:
    """BitX streams of one chunk: ``fine``/``base`` are uint8 views of equal even length (None = zeros)."""
    words = fine.view(np.uint16)
    if base is not None:
        words = words ^ base.view(np.uint16)
    return split_words(words, dtype)


def bitx_unstreams(streams: list[np.ndarray], base: np.ndarray | None, dtype: str) -> np.ndarray:
    words = join_words(streams, dtype)
    if base is not None:
        words ^= base.view(np.uint16)
    return words.view(np.uint8)


# --- blob encoding ---

def choose_codec(dtype: str, has_base: bool) -> int:
    if dtype in BITX_DTYPES:
        return CODEC_BITX if has_base else CODEC_SPLIT16
    if dtype in ("F32", "F64", "I32", "I64", "U32", "U64"):
        return CODEC_PLANES
    return CODEC_ZSTD


def _chunk_streams(codec: int, dtype: str, chunk: np.ndarray, base_chunk: np.ndarray | None) -> list:
    if codec == CODEC_ZSTD:
        return [chunk]
    if codec in (CODEC_SPLIT16, CODEC_BITX):
        return bitx_streams(chunk, base_chunk if codec == CODEC_BITX else None, dtype)
    if codec == CODEC_PLANES:
        itemsize = {"F32": 4, "I32": 4, "U32": 4}.get(dtype, 8)
        planes = chunk.reshape(-1, itemsize).T  # byte plane k = byte k of every element
        return [np.ascontiguousarray(p) for p in planes]
    raise ValueError(f"unknown codec {codec}")


BaseBytes = Callable[[int, int], np.ndarray]  # (start, end) -> the base tensor's bytes in that range


def encode(out: BinaryIO, data: np.ndarray, dtype: str = "", codec: int = CODEC_ZSTD,
           base: BaseBytes | None = None, base_key: bytes = b"") -> int:
    """Write ``data`` (a uint8 array, e.g. a view of a mapped file) as one blob to ``out``; returns its size.

    ``base(start, end)`` returns the BitX base's bytes for each chunk, so the base can come from a mapped file
    or be decoded from the store chunk by chunk.
    """
    if codec == CODEC_BITX and base is None:
        raise ValueError("BitX needs a base")
    header = HEADER.pack(MAGIC, codec, DTYPE_CODES.get(dtype, 0), 0, len(data), CHUNK_BYTES,
                         base_key.ljust(32, b"\0"))
    out.write(header)
    written = len(header)
    cctx = _compressor(ZSTD_LEVEL if codec == CODEC_ZSTD else SPLIT_LEVEL)
    for start in range(0, len(data), CHUNK_BYTES):
        end = min(start + CHUNK_BYTES, len(data))
        base_chunk = base(start, end) if codec == CODEC_BITX else None
        streams = _chunk_streams(codec, dtype, data[start:end], base_chunk)
        frames = [cctx.compress(s) for s in streams]
        prefix = struct.pack(f"<B{len(frames)}I", len(frames), *(len(f) for f in frames))
        out.write(prefix)
        written += len(prefix)
        for frame in frames:
            out.write(frame)
            written += len(frame)
    return written


def read_blob_header(blob: bytes | memoryview, where: str) -> dict:
    if len(blob) < HEADER.size:
        raise StoreCorruptionError(f"{where}: blob is truncated ({len(blob)} bytes). The store is damaged: "
                                   f"re-ingest the source into a fresh store.")
    magic, codec, dtype_code, _, raw_bytes, chunk_bytes, base_key = HEADER.unpack_from(blob, 0)
    if magic != MAGIC or codec not in CODEC_NAMES or chunk_bytes <= 0:
        raise StoreCorruptionError(f"{where}: not a zLLM blob (bad magic or codec). The store is damaged: "
                                   f"re-ingest the source into a fresh store.")
    return {"codec": codec, "dtype": DTYPE_NAMES.get(dtype_code, ""), "raw_bytes": raw_bytes,
            "chunk_bytes": chunk_bytes, "base_key": base_key}


@dataclass
class BlobIndex:
    """Where each chunk's streams lie in a blob, found by reading only the length prefixes."""

    codec: int
    dtype: str
    raw_bytes: int
    base_key: bytes
    chunks: list[tuple[int, int, list[tuple[int, int]]]]  # (raw start, raw end, [(blob offset, length)])

    @property
    def base_hex(self) -> str | None:
        return self.base_key.hex() if self.codec == CODEC_BITX else None


def index_blob(blob: bytes | memoryview, where: str) -> BlobIndex:
    info = read_blob_header(blob, where)
    view = memoryview(blob)
    pos = HEADER.size
    chunks = []
    try:
        for start in range(0, info["raw_bytes"], info["chunk_bytes"]):
            end = min(start + info["chunk_bytes"], info["raw_bytes"])
            (n,) = struct.unpack_from("<B", view, pos)
            lengths = struct.unpack_from(f"<{n}I", view, pos + 1)
            pos += 1 + 4 * n
            streams = []
            for length in lengths:
                streams.append((pos, length))
                pos += length
            if pos > len(view):
                raise ValueError("streams run past the end of the blob")
            chunks.append((start, end, streams))
    except (struct.error, ValueError) as e:
        raise StoreCorruptionError(f"{where}: blob is truncated or corrupt ({e}). The store is damaged: "
                                   f"re-ingest the source into a fresh store.") from None
    return BlobIndex(info["codec"], info["dtype"], info["raw_bytes"], info["base_key"], chunks)


def decode_chunk(blob: bytes | memoryview, index: BlobIndex, i: int, where: str,
                 base_chunk: np.ndarray | None = None) -> np.ndarray:
    """Raw bytes of chunk ``i`` (uint8 array); ``base_chunk`` is the BitX base's bytes for the same range."""
    start, end, streams = index.chunks[i]
    view = memoryview(blob)
    dctx = _decompressor()
    try:
        arrays = [np.frombuffer(dctx.decompress(view[pos:pos + length]), dtype=np.uint8)
                  for pos, length in streams]
        return _join_chunk(index.codec, index.dtype, arrays, end - start, base_chunk)
    except (zstandard.ZstdError, ValueError) as e:
        raise StoreCorruptionError(f"{where}: blob does not decode ({e}). The store is damaged: re-ingest "
                                   f"the source into a fresh store.") from None


def decode_chunks(blob: bytes | memoryview, where: str,
                  base: BaseBytes | None = None) -> Iterator[np.ndarray]:
    """Yield the raw bytes of a blob chunk by chunk (uint8 arrays)."""
    index = index_blob(blob, where)
    for i, (start, end, _) in enumerate(index.chunks):
        base_chunk = base(start, end) if index.codec == CODEC_BITX and base is not None else None
        yield decode_chunk(blob, index, i, where, base_chunk)


def _join_chunk(codec: int, dtype: str, streams: list[np.ndarray], size: int, base: np.ndarray | None):
    if codec == CODEC_ZSTD:
        chunk = streams[0]
    elif codec in (CODEC_SPLIT16, CODEC_BITX):
        if codec == CODEC_BITX and base is None:
            raise ValueError("BitX blob decoded without its base")
        chunk = bitx_unstreams(streams, base, dtype)
    else:
        chunk = np.stack(streams, axis=1).reshape(-1)
    if len(chunk) != size:
        raise ValueError(f"chunk decodes to {len(chunk)} bytes, expected {size}")
    return chunk
