"""Peak-memory measurement that excludes everything before the measured phase.

- CUDA: ``torch.cuda.reset_peak_memory_stats`` before, ``max_memory_allocated``/``max_memory_reserved``
  after (``memory_kind = "cuda_max_allocated"``); plus NVML device memory sampled by a thread, which also
  sees what the caching allocator and the CUDA context hold.
- CPU: peak resident set size above the baseline at the start (``memory_kind = "cpu_rss_delta"``). Linux
  lets a process reset its RSS high-water mark (``/proc/self/clear_refs`` ← 5), so the peak is the peak
  of this phase alone; where that is not allowed a 2 ms sampling thread stands in.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self, read, interval: float):
        super().__init__(daemon=True)
        self.read, self.interval, self.peak = read, interval, 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            value = self.read()
            if value is not None:
                self.peak = max(self.peak, value)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def _nvml_reader(device_index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # NVML missing or not permitted: no NVML number, never a crash
        return None


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.peak_bytes``, ``mem.kind``, ``mem.nvml_peak_bytes``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.nvml_peak_bytes: int | None = None
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "cpu_rss_delta"
        self._sampler = self._nvml = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            reader = _nvml_reader(self.device.index or 0)
            if reader is not None:
                self._nvml = _Sampler(reader, 0.01)
                self._nvml.start()
        else:
            self._base = (_status_kib("VmRSS") or 0) * 1024
            if not _reset_hwm():
                self._sampler = _Sampler(lambda: (_status_kib("VmRSS") or 0) * 1024, 0.002)
                self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
            self.reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
            if self._nvml is not None:
                self.nvml_peak_bytes = self._nvml.stop()
        else:
            peak = self._sampler.stop() if self._sampler else (_status_kib("VmHWM") or 0) * 1024
            self.peak_bytes = max(0, int(peak - self._base))
        return False
