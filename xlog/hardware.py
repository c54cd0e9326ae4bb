"""Hardware and software probe (once per run) and the backend report used by ``xlog doctor``."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from .privacy import scrub_text


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def proc_cpu_model() -> str | None:
    """The CPU's brand string from ``/proc/cpuinfo`` (Linux x86; None elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return None


def cpu_model() -> str | None:
    return proc_cpu_model() or platform.processor() or None


def cpu_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def nvml_probe() -> tuple[list[dict], str | None]:
    """GPUs seen by NVML as dicts, and why not when NVML is unusable."""
    try:
        import pynvml
    except ImportError:
        return [], "the nvidia-ml-py package (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return [], f"NVML could not start ({type(exc).__name__}: {exc}); no NVIDIA driver or GPU here"
    gpus = []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
                energy = True
            except Exception:
                energy = False
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_gb": mem / 1e9, "driver": driver.decode() if isinstance(driver, bytes) else driver,
                         "energy_counter": energy})
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, None


def probe_hardware(device_type: str | None = None) -> dict[str, Any]:
    """hw_* fields of the record."""
    out: dict[str, Any] = {}
    try:
        import torch
        out["hw_torch_version"] = torch.__version__
        out["hw_cuda_version"] = torch.version.cuda
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    out["hw_accelerator"] = device_type if device_type in ("cuda", "mps", "xpu", "cpu") else (
        "other" if device_type else ("cuda" if cuda else "cpu"))
    gpus, _ = nvml_probe()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus and visible not in (None, ""):
        keep = {int(x) for x in visible.split(",") if x.strip().isdigit()}
        if keep:
            gpus = [g for g in gpus if g["index"] in keep]
    if gpus:
        out["hw_gpu_name"] = scrub_text(gpus[0]["name"])
        out["hw_gpu_count"] = len(gpus)
        out["hw_gpu_memory_gb"] = round(gpus[0]["memory_gb"], 3)
        out["hw_gpu_driver"] = gpus[0]["driver"]
    elif cuda:
        import torch
        props = torch.cuda.get_device_properties(0)
        out["hw_gpu_name"] = props.name
        out["hw_gpu_count"] = torch.cuda.device_count()
        out["hw_gpu_memory_gb"] = round(props.total_memory / 1e9, 3)
    else:
        out["hw_gpu_count"] = 0
    out["hw_cpu_model"] = scrub_text(cpu_model())
    out["hw_cpu_cores"] = cpu_cores()
    try:
        import psutil
        out["hw_ram_gb"] = round(psutil.virtual_memory().total / 1e9, 3)
    except ImportError:
        pass
    out["hw_platform"] = f"{platform.system()}-{platform.machine()}"
    out["hw_python_version"] = platform.python_version()
    out["hw_transformers_version"] = _version("transformers")
    out["hw_peft_version"] = _version("peft")
    return out


def doctor_report() -> list[tuple[str, bool, str]]:
    """(backend, works, detail) for every hardware and energy backend xlog can use."""
    rows: list[tuple[str, bool, str]] = []
    rows.append(("python", True, f"{sys.version.split()[0]} on {platform.system()}-{platform.machine()}"))
    try:
        import torch
        cuda = torch.cuda.is_available()
        rows.append(("torch", True, f"{torch.__version__}; CUDA build {torch.version.cuda or 'none'}"))
        rows.append(("torch.cuda", cuda, f"{torch.cuda.device_count()} device(s)" if cuda
                     else "not available: CPU-only torch build or no GPU"))
    except ImportError:
        rows.append(("torch", False, "not installed"))
    for dist in ("transformers", "peft", "pyarrow", "duckdb", "huggingface_hub"):
        v = _version(dist)
        rows.append((dist, v is not None, v or "not installed"))
    gpus, why = nvml_probe()
    if gpus:
        desc = ", ".join(f"{g['name']} ({g['memory_gb']:.0f} GB)" for g in gpus)
        rows.append(("nvml (GPU probe)", True, f"{len(gpus)} GPU(s): {desc}; driver {gpus[0]['driver']}"))
        ok = all(g["energy_counter"] for g in gpus)
        rows.append(("nvml energy counter", ok, "total energy counters readable" if ok
                     else "some GPUs have no energy counter (needs Volta or newer)"))
    else:
        rows.append(("nvml (GPU probe)", False, why or "no GPU"))
        rows.append(("nvml energy counter", False, "needs NVML"))
    try:
        import codecarbon
        rows.append(("codecarbon", True, f"{codecarbon.__version__}: offline tracker (CPU/RAM/GPU energy, CO2)"))
    except ImportError:
        rows.append(("codecarbon", False, "not installed: pip install codecarbon"))
    rapl = "/sys/class/powercap/intel-rapl:0/energy_uj"
    if os.access(rapl, os.R_OK):
        rows.append(("cpu power counter (RAPL)", True, "readable: CPU energy is measured"))
    else:
        rows.append(("cpu power counter (RAPL)", False,
                     "not readable: codecarbon estimates CPU energy from the CPU's TDP and load"))
    try:
        import psutil
        rows.append(("psutil (RAM, peak RSS)", True, psutil.__version__))
    except ImportError:
        rows.append(("psutil (RAM, peak RSS)", False, "not installed"))
    return rows
