"""GPU discovery for a host daemon: NVML where it works, a configured number of virtual GPUs otherwise.

NVML comes from the ``nvidia-ml-py`` package (import name ``pynvml``; ``pip install notebookos[gpu]``). It is used
when it imports and ``nvmlInit()`` succeeds (an NVIDIA driver is loaded) and reports at least one device. On any
other machine the host daemon reports virtual GPUs, so the scheduler, its policies and the whole platform run
unchanged on a laptop: a virtual GPU is a slot the scheduler binds and releases, with no device behind it.

NVML enumerates every GPU of the machine and ignores ``CUDA_VISIBLE_DEVICES``; run one host daemon per server.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Environment variable that sets the default number of virtual GPUs (used where no count is given).
VIRTUAL_GPUS_ENV = "NOTEBOOKOS_VIRTUAL_GPUS"
#: Virtual GPUs reported when neither an argument nor the environment gives a count.
DEFAULT_VIRTUAL_GPUS = 8
#: Memory reported for a virtual GPU (an H100's 80 GB, so memory-aware code paths see realistic numbers).
VIRTUAL_GPU_MEMORY_MB = 81559


@dataclass(frozen=True)
class GPUInfo:
    """One GPU of a host, as the host daemon reports it (``index`` is the device id the scheduler binds)."""

    index: int
    name: str
    memory_mb: int
    uuid: str
    virtual: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_virtual_gpus() -> int:
    """The virtual GPU count from ``$NOTEBOOKOS_VIRTUAL_GPUS``, else :data:`DEFAULT_VIRTUAL_GPUS`."""
    value = os.environ.get(VIRTUAL_GPUS_ENV, "").strip()
    if not value:
        return DEFAULT_VIRTUAL_GPUS
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"${VIRTUAL_GPUS_ENV} must be an integer >= 0, got {value!r}") from None
    if count < 0:
        raise ValueError(f"${VIRTUAL_GPUS_ENV} must be an integer >= 0, got {count}")
    return count


def virtual_gpus(count: int, memory_mb: int = VIRTUAL_GPU_MEMORY_MB) -> list[GPUInfo]:
    if count < 0:
        raise ValueError(f"virtual GPU count must be >= 0, got {count}")
    return [GPUInfo(i, "notebookos virtual GPU", memory_mb, f"GPU-virtual-{i:04d}", True) for i in range(count)]


def _text(value: Any) -> str:
    """NVML strings are ``bytes`` in older nvidia-ml-py releases and ``str`` in newer ones."""
    return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def nvml_gpus() -> list[GPUInfo] | None:
    """The machine's GPUs through NVML, or None when NVML is not importable or does not initialise."""
    try:
        import pynvml
    except ImportError:
        log.debug("pynvml (nvidia-ml-py) is not installed")
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable NVIDIA driver
        log.info("NVML did not initialise (%s)", exc)
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(GPUInfo(
                index=i,
                name=_text(pynvml.nvmlDeviceGetName(handle)),
                memory_mb=int(memory.total) // (1024 * 1024),
                uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                virtual=False,
            ))
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # pragma: no cover - shutting NVML down cannot change what we found
            pass


def discover_gpus(virtual: int | None = None, *, use_nvml: bool = True) -> list[GPUInfo]:
    """This host's GPUs: NVML's when ``use_nvml`` and NVML works and finds any, else ``virtual`` virtual GPUs
    (``None``: :func:`default_virtual_gpus`). ``use_nvml=False`` forces virtual GPUs (several host daemons
    sharing one machine, as ``notebookos up`` runs them)."""
    if use_nvml:
        found = nvml_gpus()
        if found:
            log.info("NVML: %d GPU(s): %s", len(found), ", ".join(g.name for g in found))
            return found
        if found is not None:
            log.info("NVML reports no GPUs")
    count = default_virtual_gpus() if virtual is None else virtual
    log.info("using %d virtual GPU(s)", count)
    return virtual_gpus(count)
