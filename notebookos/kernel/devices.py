"""GPU binding inside a replica: which devices the running cell holds.

The front (asking the scheduler) gives the executor a list of GPU device ids with each ``lead``; they are bound
for that cell only and released when its reply is sent. While bound, ``CUDA_VISIBLE_DEVICES`` names them, so
subprocesses the cell starts see exactly those GPUs; between cells it is empty.

In-process CUDA is subtler: the CUDA driver reads ``CUDA_VISIBLE_DEVICES`` once, when the process first uses CUDA,
and numbers the visible devices from 0. :meth:`DeviceBinding.torch_device` therefore maps the bound physical id
through the visibility the process had when CUDA started, and says plainly when the bound GPU is not one this
process can reach (its CUDA context was created while other GPUs were bound).
"""

from __future__ import annotations

import os
import sys
from typing import Any

ENV = "CUDA_VISIBLE_DEVICES"


class DeviceBinding:
    def __init__(self) -> None:
        self.devices: tuple[int, ...] = ()
        # Physical ids the process's CUDA context can see, once CUDA has started (None: not started yet,
        # or started with every GPU visible).
        self._cuda_visible: tuple[int, ...] | None = None
        self._cuda_started = False
        os.environ[ENV] = ""

    def bind(self, devices: tuple[int, ...]) -> None:
        self.devices = tuple(int(d) for d in devices)
        os.environ[ENV] = ",".join(map(str, self.devices))

    def release(self) -> None:
        self._note_cuda_start()
        self.devices = ()
        os.environ[ENV] = ""

    def _note_cuda_start(self) -> None:
        """Record what CUDA saw if the cell that is ending started it."""
        if self._cuda_started:
            return
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_initialized():
            self._cuda_started = True
            self._cuda_visible = self.devices

    def torch_device(self) -> Any:
        import torch

        if not self.devices:
            return torch.device("cpu")
        self._note_cuda_start()
        physical = self.devices[0]
        visible = self._cuda_visible if self._cuda_started else self.devices
        if visible is None:  # CUDA started with all GPUs visible: index == physical id
            return torch.device("cuda", physical)
        if physical not in visible:
            raise RuntimeError(
                f"GPU {physical} is bound to this cell, but this replica's CUDA context was created while GPUs "
                f"{list(visible)} were bound and cannot reach it. Move tensors to the CPU and restart the kernel, "
                "or start CUDA work in subprocesses (they see CUDA_VISIBLE_DEVICES)."
            )
        return torch.device("cuda", visible.index(physical))
