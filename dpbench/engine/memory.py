"""Peak-memory measurement that excludes everything before the measured phase.

- CUDA: ``torch.cuda.reset_peak_memory_stats`` before, ``max_memory_allocated``/``max_memory_reserved``
  after (``memory_kind = "cuda_max_allocated"``); plus NVML device memory sampled by a thread, which also
  sees what the caching allocator and the CUDA context hold.
- CPU: peak resident set size above the baseline at the start (``memory_kind = "cpu_rss_delta"``). Linux
  lets a process reset its RSS high-water mark (``/proc/self/clear_refs`` ← 5), so the peak is the peak
  of this phase alone; where that is not allowed a 2 ms sampling thread stands in.

  RSS only tracks tensor memory if freed tensors leave the process: glibc keeps freed heap memory
  (its mmap threshold grows after the first large free), which made repeated measurements of the same
  step differ by 10×. Inside ``PeakMemory`` on CPU, glibc's mmap threshold is pinned to 64 KiB, so every
  tensor larger than that is its own mapping and is returned on free; measured this way the same step
  repeats to within a few percent. It also makes allocation ~2× slower, so callers measure memory on
  steps they do not time (dpbench/engine/measure.py) and the fast setting is restored on exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_PRECISE_THRESHOLD = 64 * 1024
_FAST_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def _precise_cpu_allocation(enabled: bool) -> None:
    if _LIBC is not None:
        threshold = _PRECISE_THRESHOLD if enabled else _FAST_THRESHOLD
        _LIBC.mallopt(_M_MMAP_THRESHOLD, threshold)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)  # what glibc's dynamic adjustment would pick
        _LIBC.malloc_trim(0)


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


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA OOM, and the cuDNN/cuBLAS allocation failures that surface as RuntimeErrors."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(marker in text for marker in (
        "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory"))


def _nvml_reader(device: torch.device):
    from dpbench.engine.telemetry import nvml_handle

    handle = nvml_handle(device)
    if handle is None:  # NVML missing or not permitted: no NVML number, never a crash
        return None
    import pynvml

    return lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)


def resident_bytes(device: torch.device | str) -> int:
    """What is held now: CUDA allocated bytes, or the process's resident set (after returning freed heap)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return int(torch.cuda.memory_allocated(device))
    _precise_cpu_allocation(True)
    try:
        return (_status_kib("VmRSS") or 0) * 1024
    finally:
        _precise_cpu_allocation(False)


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
            reader = _nvml_reader(self.device)
            if reader is not None:
                self._nvml = _Sampler(reader, 0.01)
                self._nvml.start()
        else:
            _precise_cpu_allocation(True)
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
            _precise_cpu_allocation(False)
        return False
