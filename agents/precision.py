"""How an agent computes on its hardware: the precision it trains in, the model it samples with, and on a CPU the
C library's memory policy.

Under ``precision="bf16"`` the passes and the update run under bfloat16 autocast (the weights and the optimizer stay
float32) and the rollout engine samples with a bfloat16 copy of the weights
([agents.sampling_copy][agents.sampling_copy]).
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from typing import Any

import torch

from agents.sampling_copy import bfloat16_copy, can_pack


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls in hardware (AMX or AVX512-BF16), where they beat float32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"``, what ``precision`` (``"auto"``, ``"fp32"`` or ``"bf16"``) comes to on ``device``."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision='bf16', but this GPU does not support bfloat16; use precision='fp32'.")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "precision='bf16' on a CPU without native bfloat16 (AMX or AVX512-BF16) would run slower than float32; "
            "training in fp32 instead.",
            stacklevel=3,
        )
        return "fp32"
    return precision


def autocast(precision: str, device: torch.device) -> Any:
    """bfloat16 autocast when ``precision`` resolved to bf16 (on any device), else full precision."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def sampling_model(lm: torch.nn.Module, precision: str, device: torch.device, rows: int) -> torch.nn.Module:
    """The model the rollout engine samples with: ``lm`` itself, or under bf16 a bfloat16 copy of its weights (on
    a CPU with its linear layers pre-packed for oneDNN for ``rows`` rows, [agents.sampling_copy][agents.sampling_copy]).

    Autocast casts every float32 weight again at each decode step; the copy is cast once per rollout (a decode
    step of the embedded model at batch 32 on one Xeon core with AMX: 185 ms in float32, 105 ms under autocast,
    93 ms with the copy). Its log-probs differ from the update's autocast pass by bfloat16 rounding, so π_old is
    taken in the update's precision (PPO always; GRPO/RLOO's ``recompute_old_logprobs``)."""
    if precision != "bf16":
        return lm
    return bfloat16_copy(lm, rows if device.type == "cpu" and can_pack() else None)


def keep_freed_host_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse, for the rest of the process: no separate mappings for
    large blocks (each one is returned to the OS when freed) and no trimming of the heap. Whether it applied
    (not on another C library or OS). The embedded model's backward pass at 8 × 44 tokens under bf16, one EPYC
    thread: 1.10–1.37 s with glibc's defaults, 0.97–1.00 s so (`GLIBC_TUNABLES` set alike, side by side)."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the process's C library
    m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
