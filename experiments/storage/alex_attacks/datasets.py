"""Key sets shaped like the ones the ALEX attack paper evaluates on, plus a loader for real key files.

The paper (Yang et al., VLDB 2024) uses the ALEX repository's data sets: ``lognormal``, ``longitudes`` (OSM
longitudes), ``longlat`` and ``YCSB``. We cannot download them here, so :func:`make_dataset` generates keys of
the same *shape* (that is what the attacks and ALEX's linear models react to):

* ``lognormal``: ``exp(N(0, 2))`` scaled by 1e9 and rounded to integers, as the ALEX benchmark generator does;
  heavily skewed, most keys crowded at the low end;
* ``uniform``: uniform integers in ``[0, 1e12)``, the easy case for linear models;
* ``longitudes``: a multimodal mixture in ``[-180, 180]``: dense narrow bands (cities / coastlines) over a
  sparse background, the way OSM longitudes cluster, which gives ALEX many small, oddly-shaped nodes;
* ``ycsb``: uniform 64-bit ids (YCSB hashes its record ids), stored as float64 like the paper's key type.

Every generated set is sorted, unique float64 and determined by ``(name, n, seed)``. :func:`legit_inserts` draws
a legitimate insert workload from the same distribution (no key of the bulk set, arrival order random), the
baseline every attack is compared with. :func:`load_keys` reads a real key file (little-endian float64 or
uint64 binary, optionally with the 8-byte SOSD count header, or text with one key per line).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "DatasetError", "make_dataset", "legit_inserts", "load_keys"]


class DatasetError(ValueError):
    """A data set name or key file that cannot be used; the message names the data set or the file."""


def _lognormal(rng: np.random.Generator, m: int) -> np.ndarray:
    return np.round(rng.lognormal(0.0, 2.0, m) * 1e9)


def _uniform(rng: np.random.Generator, m: int) -> np.ndarray:
    return np.floor(rng.uniform(0.0, 1e12, m))


# Bands of the longitudes mixture: (centre in degrees, width in degrees, weight). Fixed, not drawn from the
# seed, so that every seed samples the same "map" (the seed only changes which points are sampled).
_LONGITUDE_BANDS = (
    (-122.4, 0.6, 0.07), (-118.2, 0.9, 0.08), (-87.6, 0.5, 0.05), (-74.0, 0.7, 0.09), (-46.6, 0.8, 0.04),
    (-3.7, 1.2, 0.06), (2.35, 0.6, 0.08), (8.5, 2.5, 0.12), (13.4, 1.0, 0.06), (18.0, 3.0, 0.05),
    (37.6, 1.5, 0.05), (77.2, 2.0, 0.06), (116.4, 1.4, 0.05), (139.7, 0.8, 0.06), (151.2, 0.5, 0.03),
)
_LONGITUDE_BACKGROUND = 0.05  # share of points spread uniformly over the whole range (rural / ocean)


def _longitudes(rng: np.random.Generator, m: int) -> np.ndarray:
    centres = np.array([b[0] for b in _LONGITUDE_BANDS])
    widths = np.array([b[1] for b in _LONGITUDE_BANDS])
    weights = np.array([b[2] for b in _LONGITUDE_BANDS])
    weights = weights / weights.sum() * (1.0 - _LONGITUDE_BACKGROUND)
    which = rng.choice(len(_LONGITUDE_BANDS) + 1, size=m, p=np.append(weights, _LONGITUDE_BACKGROUND))
    background = which == len(_LONGITUDE_BANDS)
    band = np.where(background, 0, which)
    # Laplace rather than normal: real bands have a sharp core and long tails (suburbs).
    values = centres[band] + rng.laplace(0.0, widths[band] / 3.0)
    values = np.where(background, rng.uniform(-180.0, 180.0, m), values)
    # OSM stores longitudes with 7 decimals; rounding keeps keys on a grid like the real file.
    return np.round(np.clip(values, -180.0, 180.0), 7)


def _ycsb(rng: np.random.Generator, m: int) -> np.ndarray:
    return rng.integers(0, 2**63 - 1, size=m, dtype=np.int64).astype(np.float64) * 2.0


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "lognormal": _lognormal,
    "uniform": _uniform,
    "longitudes": _longitudes,
    "ycsb": _ycsb,
}
DATASETS: tuple[str, ...] = tuple(_GENERATORS)


def _generator(name: str) -> Callable[[np.random.Generator, int], np.ndarray]:
    try:
        return _GENERATORS[name]
    except KeyError:
        raise DatasetError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}") from None


def _sample_unique(name: str, n: int, rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` distinct keys of data set ``name`` not in ``exclude`` (sorted); resamples to replace collisions."""
    draw = _generator(name)
    keys = np.empty(0, dtype=np.float64)
    for _ in range(64):
        missing = n - keys.size
        if missing <= 0:
            break
        # Oversample a little: rounding to integers / to 7 decimals makes collisions, mostly in the dense parts.
        fresh = draw(rng, int(missing * 1.1) + 16).astype(np.float64)
        fresh = fresh[np.isfinite(fresh)]
        if exclude is not None and exclude.size:
            fresh = fresh[~np.isin(fresh, exclude)]
        keys = np.union1d(keys, fresh)
        if keys.size > n:
            # Keep a random subset, not the smallest keys, so the distribution is not truncated.
            keys = np.sort(rng.choice(keys, size=n, replace=False))
    if keys.size < n:
        raise DatasetError(f"data set {name!r} cannot supply {n} distinct keys")
    return keys


def make_dataset(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unique, sorted float64 keys shaped like data set ``name`` (one of :data:`DATASETS`)."""
    if n < 0:
        raise DatasetError(f"data set size must be >= 0, got {n}")
    _generator(name)
    rng = np.random.default_rng([seed, DATASETS.index(name), 0x5EED])
    return _sample_unique(name, n, rng)


def legit_inserts(name: str, bulk_keys: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """A legitimate workload: ``n`` new keys from the same distribution as ``bulk_keys``, in random order.

    The keys are distinct from each other and from ``bulk_keys``; their order is shuffled, as independent clients
    would produce them (a sorted stream would be an append-only workload, not "normal").
    """
    if n < 0:
        raise DatasetError(f"insert count must be >= 0, got {n}")
    _generator(name)
    rng = np.random.default_rng([seed, DATASETS.index(name), 0x1E617])
    keys = _sample_unique(name, n, rng, exclude=np.asarray(bulk_keys, dtype=np.float64))
    return rng.permutation(keys)


_TEXT_SUFFIXES = {".txt", ".csv", ".tsv", ".text"}


def _looks_like_text(head: bytes) -> bool:
    return bool(head) and all(c in b"0123456789+-.eEinfaINFA \t\r\n," for c in head)


def load_keys(path: str | os.PathLike[str], dtype: str = "auto") -> np.ndarray:
    """Read a real key set and return it as sorted, unique float64 keys.

    ``dtype`` is ``"f64"`` (raw little-endian float64, the ALEX repo's binary format), ``"u64"`` (raw little-endian
    uint64, as SOSD files; a leading 8-byte count equal to the number of keys that follow is skipped), ``"text"``
    (one key per line) or ``"auto"``: text if the suffix or the first bytes say so, ``u64`` if the file name
    mentions ``uint64``/``u64``, else ``f64``. A missing, empty, odd-sized or non-numeric file raises
    :class:`DatasetError` naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"key file {str(p)!r} does not exist or is not a file")
    raw = p.read_bytes()
    if not raw:
        raise DatasetError(f"key file {str(p)!r} is empty")
    if dtype == "auto":
        lower = p.name.lower()
        if p.suffix.lower() in _TEXT_SUFFIXES or _looks_like_text(raw[:4096]):
            dtype = "text"
        elif "uint64" in lower or lower.endswith(".u64"):
            dtype = "u64"
        else:
            dtype = "f64"
    if dtype == "text":
        try:
            keys = np.array([float(tok) for tok in raw.decode("ascii").replace(",", "\n").split()], dtype=np.float64)
        except (UnicodeDecodeError, ValueError) as e:
            raise DatasetError(f"key file {str(p)!r} is not text with one number per line ({e})") from None
    elif dtype in ("f64", "u64"):
        if len(raw) % 8:
            raise DatasetError(f"key file {str(p)!r} has {len(raw)} bytes, not a multiple of 8: not a file of "
                               f"64-bit keys (corrupt or truncated?)")
        if dtype == "u64":
            ints = np.frombuffer(raw, dtype="<u8")
            if ints.size > 1 and int(ints[0]) == ints.size - 1:
                ints = ints[1:]  # SOSD header: the key count
            keys = ints.astype(np.float64)
        else:
            keys = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    else:
        raise DatasetError(f"unknown key file type {dtype!r}; use auto, f64, u64 or text")
    if keys.size == 0:
        raise DatasetError(f"key file {str(p)!r} holds no keys")
    if not np.all(np.isfinite(keys)):
        bad = int(np.count_nonzero(~np.isfinite(keys)))
        raise DatasetError(f"key file {str(p)!r} holds {bad} NaN/infinite values read as {dtype}: corrupt, or "
                           f"not float64 (try dtype='u64' or a text file)")
    return np.unique(keys)
