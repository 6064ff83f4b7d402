"""The device a command runs on, the precision it computes in, and a one-line description of the
machine for reports."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any, Optional

import torch

from budgetlora.errors import ConfigError


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX)."""
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 where the hardware runs it natively (CPUs with AVX512-BF16/AMX too)."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ConfigError("precision: fp16 autocast is not supported on CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str) -> Any:
    """torch's autocast for a bf16/fp16 run, a no-op for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def machine_description() -> str:
    """'2-core AMD EPYC ... CPU, AVX512-BF16, no GPU, torch 2.13.0' or the GPU's name."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    flags = []
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        flags.append("AVX512-BF16")
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        flags.append("AMX")
    cpu = cpu_model() or platform.machine()
    return f"{os.cpu_count()}-core {cpu} CPU{', ' + ', '.join(flags) if flags else ''}, no GPU, torch {torch.__version__}"


def cpu_model() -> Optional[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
