"""Where and in what precision a model runs: the device and dtype a user named, checked
before any model is loaded, and the torch dtype of each safetensors dtype."""

from __future__ import annotations

import torch

from surgeon.errors import SurgeonError
from surgeon.model.geometry import shown
from surgeon.runtime.settings import RunSettings

TORCH_DTYPES = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


DEVICES = "cpu, cuda, cuda:0, mps, auto"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str) -> torch.device:
    """The torch device a user named, checked up front: a name torch does not parse, a
    backend this machine lacks, or a GPU index past the last is one line before any model
    is loaded, not a RuntimeError from the first tensor moved. Messages name the device,
    not the option: the TUI shows them too."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SurgeonError(f"device {shown(device)}: not a device torch knows ({DEVICES})") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    backend = getattr(torch, dev.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):
        raise SurgeonError(f"device {shown(device)}: not a device surgeon can compute on ({DEVICES})")
    if not is_available():
        raise SurgeonError(f"device {shown(device)}: {dev.type.upper()} is not available on this machine")
    device_count = getattr(backend, "device_count", None)
    count = device_count() if callable(device_count) else 1
    if dev.index is not None and dev.index >= count:
        raise SurgeonError(f"device {shown(device)}: this machine has {count} {dev.type} device(s), 0-{count - 1}")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise SurgeonError(f"dtype {shown(dtype)}: use auto, float32, bfloat16 or float16 (or fp32, bf16, fp16)")
    return DTYPES[dtype]


def resolve_run(run: RunSettings) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype RUN names, checked before any model is loaded."""
    run.validate()
    device = resolve_device(run.device)
    return device, resolve_dtype(run.dtype, device)
