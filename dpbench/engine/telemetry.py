"""GPU energy, power, utilisation and the process's own device memory per phase of a run, from NVML.

The CUDA device is mapped to its NVML handle through its PCI bus id: CUDA's device index is not NVML's
once CUDA_VISIBLE_DEVICES (set by Ray, Slurm or the user) renumbers the visible GPUs, while the bus id
names the same board for both. Per phase (train, sample, evaluate):

- energy: NVML's cumulative counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since the driver
  loaded; Volta and newer) read at the start and the end;
- mean power: that energy over the phase's seconds (sampled power where the counter is missing);
- mean utilisation: ``nvmlDeviceGetUtilizationRates().gpu`` sampled every 100 ms by a thread;
- the process's own device memory: its entry in ``nvmlDeviceGetComputeRunningProcesses``, where NVML
  shows it (a container's PID namespace can hide it).

The counters are the whole GPU's: another process on the same GPU is counted too. Without NVML (CPU,
no driver, no permission) every number is None and nothing fails.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch

SAMPLE_SECONDS = 0.1


def pci_bus_id(domain: int, bus: int, device: int) -> str:
    """NVML's spelling of a PCI address, e.g. ``00000000:3B:00.0`` (CUDA devices are function 0)."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def nvml_handle(device: torch.device | str):
    """The NVML handle of a CUDA device, found by its PCI bus id; None without CUDA or NVML."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        import pynvml

        pynvml.nvmlInit()
        props = torch.cuda.get_device_properties(device.index if device.index is not None else torch.cuda.current_device())
        return pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id(props.pci_domain_id, props.pci_bus_id, props.pci_device_id))
    except Exception:  # noqa: BLE001 - NVML missing, not permitted or too old: no numbers, never a crash
        return None


def _nvml_value(read):
    try:
        return read()
    except Exception:  # noqa: BLE001 - a query this GPU or driver does not support
        return None


@dataclass
class PhaseReading:
    """One phase's NVML numbers (None where NVML could not say)."""

    seconds: float
    energy_joules: Optional[float] = None
    mean_power_watts: Optional[float] = None
    mean_utilization_percent: Optional[float] = None
    peak_process_memory_bytes: Optional[int] = None


class _PhaseSampler(threading.Thread):
    def __init__(self, handle):
        super().__init__(daemon=True)
        import pynvml

        self.nvml, self.handle = pynvml, handle
        self.power, self.utilization, self.process_memory = [], [], []
        self._stop_event = threading.Event()

    def sample(self) -> None:
        nvml, handle = self.nvml, self.handle
        power = _nvml_value(lambda: nvml.nvmlDeviceGetPowerUsage(handle))  # mW
        if power is not None:
            self.power.append(power / 1000)
        utilization = _nvml_value(lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        if utilization is not None:
            self.utilization.append(float(utilization))
        processes = _nvml_value(lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        own = [p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory is not None]
        if own:
            self.process_memory.append(int(own[0]))

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()  # a phase shorter than one interval still has a reading


class GpuTelemetry:
    """``with telemetry.phase("train"): ...`` for each phase, then ``telemetry.readings``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.handle = nvml_handle(self.device)
        self.readings: dict[str, PhaseReading] = {}

    def _energy_mj(self) -> Optional[int]:
        import pynvml

        return _nvml_value(lambda: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)))

    @contextmanager
    def phase(self, name: str):
        if self.handle is None:
            yield
            return
        torch.cuda.synchronize(self.device)
        sampler = _PhaseSampler(self.handle)
        start_energy, start = self._energy_mj(), time.perf_counter()
        sampler.start()
        try:
            yield
        finally:
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            end_energy = self._energy_mj()
            sampler.stop()
            energy = (end_energy - start_energy) / 1000 if None not in (start_energy, end_energy) else None
            power = energy / seconds if energy is not None and seconds > 0 else _mean(sampler.power)
            self.readings[name] = PhaseReading(
                seconds=seconds, energy_joules=energy, mean_power_watts=power,
                mean_utilization_percent=_mean(sampler.utilization),
                peak_process_memory_bytes=max(sampler.process_memory) if sampler.process_memory else None)

    @property
    def energy_joules(self) -> Optional[float]:
        """The phases' energy summed; None unless every phase has one."""
        energies = [r.energy_joules for r in self.readings.values()]
        return sum(energies) if energies and None not in energies else None

    @property
    def peak_process_memory_bytes(self) -> Optional[int]:
        peaks = [r.peak_process_memory_bytes for r in self.readings.values() if r.peak_process_memory_bytes is not None]
        return max(peaks) if peaks else None


def _mean(values: list) -> Optional[float]:
    return sum(values) / len(values) if values else None
