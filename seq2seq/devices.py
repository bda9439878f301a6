"""Where a script runs and in which precision: the choices that training, chat, evaluation and
profiling share, without importing the training loop.

`--precision auto` picks bf16 where the hardware multiplies it natively and fp32 elsewhere:
bf16 on a CPU with AMX or AVX-512 BF16 (elsewhere bf16 is emulated and slower than fp32), and on
a CUDA GPU that computes in bf16 and whose cuDNN runs a GRU in bf16. The last check matters:
PyTorch's autocast wrapper for cuDNN RNNs casts them to fp16 whatever dtype autocast asks for
(aten/src/ATen/cudnn/AutocastRNN.cpp), so `seq2seq.model.GRU` casts to the asked dtype itself,
and a cuDNN without bf16 RNNs (before 9.13) is found out here rather than mid-run.
"""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")


class DeviceError(Exception):
    """A device or precision this machine cannot provide; the message is one line for the user."""


def huge_pages_for_tensors() -> None:
    """Back CPU tensors of 2 MiB and more with transparent huge pages (PyTorch's
    THP_MEM_ALLOC_ENABLE), unless the environment already says otherwise. A training step
    allocates its large activations afresh every iteration; with 4 KiB pages each one costs
    thousands of page faults (23,000 an iteration of the tuned recipe), and its matrix products
    more TLB misses. The gain is within this 2-core machine's noise: 13% in one comparison, none
    in another (docs/training.md, Training speed). PyTorch reads the variable at the first allocation of that size, so call this before any."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda: no CUDA device is available (try --device cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps: Apple's MPS backend is not available (try --device cpu)")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """AMX or AVX-512 BF16, the instructions oneDNN uses for bf16 matrix products."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def gru_runs_in(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether a GRU runs forward and backward in `dtype` on `device` (tried on a tiny one)."""
    from .model import GRU  # the wrapper the model uses, with its casts

    try:
        gru = GRU(8, 8, batch_first=True).to(device)
        with torch.autocast(device.type, dtype=dtype):
            out, _ = gru(torch.randn(2, 3, 8, device=device, requires_grad=True))
        out.float().sum().backward()
    except RuntimeError:
        return False
    return out.dtype == dtype


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """The precision to run in and why (for the first status line)."""
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("--precision fp16 needs CUDA; on the CPU use --precision bf16")
    if precision == "bf16" and device.type == "cuda" and not gru_runs_in(torch.bfloat16, device):
        raise DeviceError(
            "--precision bf16: this GPU's cuDNN cannot run a GRU in bf16 (cuDNN 9.13 or later can); "
            "use --precision fp16 or fp32"
        )
    if precision != "auto":
        return precision, "as asked"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return "bf16", "auto: this CPU multiplies bf16 natively (AMX or AVX-512 BF16)"
        return "fp32", "auto: this CPU has no native bf16 (AMX or AVX-512 BF16), so bf16 would be emulated"
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            return "fp32", "auto: this GPU has no native bf16"
        if not gru_runs_in(torch.bfloat16, device):
            return "fp32", "auto: this GPU's cuDNN cannot run a GRU in bf16 (cuDNN 9.13 or later can)"
        return "bf16", "auto: this GPU and its cuDNN run bf16 natively"
    return "fp32", f"auto: fp32 on {device.type}"


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision: bf16 or fp16, none for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
