"""Energy metering: codecarbon's offline tracker for CPU/RAM (and GPU without NVML counters),
NVML total-energy counters for GPUs; degrades to ``none`` without raising."""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

log = logging.getLogger("xlog")
DEFAULT_COUNTRY = "USA"
MIN_MEASURED_S = 0.5  # below this codecarbon has not taken a real measurement


_PRIME_LOCK = threading.Lock()


def prime_codecarbon_cpu_model() -> bool:
    """Give codecarbon the CPU's name from ``/proc/cpuinfo`` so that it does not ask py-cpuinfo.

    codecarbon looks the CPU's name up once per process (``codecarbon.core.util.detect_cpu_model``,
    cached) through ``cpuinfo.get_cpu_info()``, which starts a second Python interpreter: about 1 s
    of CPU time, taken from the cores a training run is using (most of codecarbon's start-up cost).
    On Linux the same brand string is in ``/proc/cpuinfo``; this fills codecarbon's cache with it,
    swapping ``cpuinfo.get_cpu_info`` for the duration of that one call only. Returns whether
    codecarbon's cache holds a name now; does nothing (codecarbon asks py-cpuinfo itself) where
    ``/proc/cpuinfo`` has no model name or codecarbon's internals are not the expected ones.
    """
    from .hardware import proc_cpu_model
    name = proc_cpu_model()
    if not name:
        return False
    try:
        import cpuinfo
        from codecarbon.core import util as cc_util
    except Exception:
        return False
    detect = getattr(cc_util, "detect_cpu_model", None)
    info = getattr(detect, "cache_info", None)
    if not callable(info) or not callable(getattr(cpuinfo, "get_cpu_info", None)):
        return False
    with _PRIME_LOCK:
        if info().currsize:
            return True
        original = cpuinfo.get_cpu_info
        cpuinfo.get_cpu_info = lambda: {"brand_raw": name}
        try:
            detect()
        except Exception:
            return False
        finally:
            cpuinfo.get_cpu_info = original
    return True


class EnergyMeter:
    """Start once, stop once. Never raises: failures end up as ``energy_source='none'``.

    ``start`` returns at once: NVML's counters and codecarbon's tracker start in a background thread
    (codecarbon needs about a second to probe the hardware), off the training's critical path. The
    seconds before they were reading are accounted for in ``stop``: the energy of the whole run is the
    mean power over the measured window times the run's duration (``energy_measured_s`` says how long
    the window was).
    """

    def __init__(self, use_codecarbon: bool = True, use_nvml: bool = True,
                 country_iso_code: str | None = None):
        self.use_codecarbon = use_codecarbon
        self.use_nvml = use_nvml
        self.country = (country_iso_code or os.environ.get("XLOG_COUNTRY_ISO_CODE") or DEFAULT_COUNTRY).upper()
        self._tracker = None
        self._tracker_t0: float | None = None
        self._thread: threading.Thread | None = None
        self._nvml_handles: list = []
        self._nvml_start: list[int] = []
        self._nvml_t0: float | None = None
        self._t0: float | None = None
        self._run_t0: float | None = None
        self.errors: list[str] = []

    def start(self) -> None:
        self._t0 = time.monotonic()
        if self.use_nvml or self.use_codecarbon:
            self._thread = threading.Thread(target=self._start_all, name="xlog-energy", daemon=True)
            self._thread.start()

    def _start_all(self) -> None:
        if self.use_nvml:
            self._start_nvml()
        if self.use_codecarbon:
            self._start_codecarbon()

    def mark_run_start(self) -> None:
        """The run to account for starts now (the meter may have been started earlier)."""
        self._run_t0 = time.monotonic()

    def _start_nvml(self) -> None:
        try:
            import pynvml
            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            idx = list(range(pynvml.nvmlDeviceGetCount()))
            if visible:
                keep = [int(x) for x in visible.split(",") if x.strip().isdigit()]
                idx = [i for i in idx if i in keep] if keep else idx
            for i in idx:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                self._nvml_start.append(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))  # mJ
                self._nvml_handles.append(h)
            self._nvml_t0 = time.monotonic()
        except Exception as exc:
            self._nvml_handles, self._nvml_start = [], []
            self.errors.append(f"nvml: {type(exc).__name__}")

    def _start_codecarbon(self) -> None:
        try:
            prime_codecarbon_cpu_model()
            from codecarbon import OfflineEmissionsTracker
            cc_log = logging.getLogger("codecarbon")
            cc_log.setLevel(logging.ERROR)
            tracker = OfflineEmissionsTracker(country_iso_code=self.country, save_to_file=False,
                                              log_level="error", measure_power_secs=15,
                                              tracking_mode="process" if not self._nvml_handles else "machine",
                                              allow_multiple_runs=True)
            tracker.start()
            self._tracker_t0 = time.monotonic()
            self._tracker = tracker
        except Exception as exc:
            self._tracker = None
            self.errors.append(f"codecarbon: {type(exc).__name__}: {exc}")

    def stop(self) -> dict[str, Any]:
        """energy_* fields of the record, for the run from ``mark_run_start`` (or ``start``) to now."""
        end = time.monotonic()
        run_s = end - (self._run_t0 or self._t0 or end)
        if self._thread is not None:
            self._thread.join(timeout=30)  # a run shorter than the meter's start-up
        out: dict[str, Any] = {"energy_source": "none"}
        gpu_kwh = None
        if self._nvml_handles:
            try:
                import pynvml
                mj = sum(pynvml.nvmlDeviceGetTotalEnergyConsumption(h) - s
                         for h, s in zip(self._nvml_handles, self._nvml_start))
                # The run's share at the mean power over the window the counters covered.
                meter_s = time.monotonic() - (self._nvml_t0 or end)
                gpu_kwh = mj / 3.6e9 * (run_s / meter_s if meter_s > 0 else 1.0)
            except Exception as exc:
                self.errors.append(f"nvml: {type(exc).__name__}")
            finally:
                try:
                    pynvml.nvmlShutdown()
                except Exception:
                    pass
        cc = None
        if self._tracker is not None:
            try:
                self._tracker.stop()
                cc = self._tracker.final_emissions_data
            except Exception as exc:
                self.errors.append(f"codecarbon: {type(exc).__name__}: {exc}")
        measured = time.monotonic() - self._tracker_t0 if self._tracker_t0 else 0.0
        if cc is not None and measured >= MIN_MEASURED_S:
            # Energy of the run = mean power over the measured window x run duration.
            scale = run_s / measured
            cpu = float(cc.cpu_energy) * scale
            ram = float(cc.ram_energy) * scale
            if gpu_kwh is None and cc.gpu_energy:
                gpu_kwh = float(cc.gpu_energy) * scale
            total = cpu + ram + (gpu_kwh or 0.0)
            intensity = (float(cc.emissions) / float(cc.energy_consumed)) if cc.energy_consumed else None
            out.update(energy_source="codecarbon+nvml" if self._nvml_handles and gpu_kwh is not None else "codecarbon",
                       energy_cpu_kwh=cpu, energy_ram_kwh=ram, energy_gpu_kwh=gpu_kwh, energy_kwh=total,
                       energy_co2_kg=total * intensity if intensity is not None else None,
                       energy_country_iso_code=self.country, energy_measured_s=min(measured, run_s))
        elif gpu_kwh is not None:
            out.update(energy_source="nvml", energy_gpu_kwh=gpu_kwh, energy_kwh=gpu_kwh, energy_measured_s=run_s)
        elif cc is not None:
            self.errors.append(f"codecarbon measured only {measured:.2f} s: too short to report")
        return out
