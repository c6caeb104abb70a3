"""Data-parallel training with ``torch.distributed``: the process group and the few collectives textgym uses.

A launcher (``torchrun``, ``accelerate launch``, SLURM's ``srun`` with the same variables) starts one process per device
and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
[init_distributed][textgym.lm.distributed.init_distributed] joins them (``nccl`` on CUDA, ``gloo`` on the CPU). Without
those variables, or with one process, every helper here is the identity and nothing is imported or initialised: a single
process runs exactly the code it ran before distributed training existed.

Every collective has a timeout (``TEXTGYM_DIST_TIMEOUT`` seconds, default 1800), so a rank that died or disagrees makes
the others fail with an error instead of waiting for ever; checks whose outcome could differ between ranks are decided
together ([check_same_on_all_ranks][textgym.lm.distributed.check_same_on_all_ranks]), so every rank raises the same
error.

Both the agents and the reward-model trainer use it, which is why it lives here and not in ``agents``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

DEFAULT_TIMEOUT_S = 1800.0


def env_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_distributed() -> bool:
    """Join the process group the launcher's environment describes, once; returns whether training is
    distributed (more than one process).

    On CUDA each process takes the GPU ``LOCAL_RANK`` (so ``device="cuda"`` means that GPU) and uses ``nccl``;
    otherwise ``gloo``.
    """
    if is_initialized():
        return torch.distributed.get_world_size() > 1
    if env_world_size() <= 1:
        return False
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={env_world_size()} but {name} is not set: start distributed runs with torchrun or "
                "accelerate launch, which set RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT."
            )
    cuda = torch.cuda.is_available() and os.environ.get("TEXTGYM_DIST_BACKEND", "") != "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(
        backend="nccl" if cuda else "gloo",
        timeout=timedelta(seconds=float(os.environ.get("TEXTGYM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))),
    )
    return torch.distributed.get_world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes logs, samples and checkpoints (rank 0, or the only process)."""
    return rank() == 0


def _device_for_collectives(tensor: torch.Tensor) -> torch.device:
    """nccl reduces CUDA tensors only; gloo CPU tensors only (it also takes CUDA ones, but slowly)."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks (a new tensor, no gradient); ``tensor`` itself with one process."""
    if world_size() == 1:
        return tensor
    out = tensor.detach().to(_device_for_collectives(tensor), copy=True)
    torch.distributed.all_reduce(out)
    return out.to(tensor.device)


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """The ranks' ``tensor`` (each the same shape) concatenated along dimension 0, in rank order."""
    if world_size() == 1:
        return tensor
    local = tensor.detach().to(_device_for_collectives(tensor)).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    torch.distributed.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``parameters`` over the ranks, in one flat buffer (one collective, not one per
    tensor). A parameter without a gradient counts as zeros. Sharded (FSDP, ``DTensor``) parameters are left
    alone: FSDP reduces their gradients itself."""
    if world_size() == 1:
        return
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if not isinstance(p, DTensor)]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (N,)
    flat = all_reduce_sum(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others: rank 0 builds shared caches (the converted embedded
    model, the tiny model) that the others then find instead of racing to build them too."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def check_same_on_all_ranks(what: str, value: Any) -> None:
    """Raise the same ``ValueError`` on every rank unless ``value`` (JSON-able) is equal on all of them."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
    digests = all_gather_object(digest)
    if len(set(digests)) > 1:
        groups: dict[str, list[int]] = {}
        for r, d in enumerate(digests):
            groups.setdefault(d, []).append(r)
        detail = "; ".join(f"ranks {ranks} hash {d[:10]}" for d, ranks in groups.items())
        raise ValueError(
            f"The processes disagree on the {what} ({detail}): every rank must be started with the same "
            "command and settings (only the device may differ)."
        )


def agree(flag: bool) -> bool:
    """``True`` on every rank if ``flag`` is ``True`` on any rank (so all ranks take the same branch)."""
    if world_size() == 1:
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)])).item() > 0)


def shard_range(total: int, what: str) -> slice:
    """This rank's contiguous share of ``total`` items, which the world size must divide."""
    n = world_size()
    if total % n:
        raise ValueError(f"{what}={total} is not divisible by the number of processes ({n}); change one of them.")
    size = total // n
    return slice(rank() * size, (rank() + 1) * size)


# --- FSDP: models sharded over the processes -----------------------------------------------------------------
def fully_shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """Shard ``model``'s weights (and so its gradients and optimizer state) over the processes with FSDP2: each
    transformer block is one unit, gathered just before it runs and freed after, the embeddings and output layer the
    root unit. Gradients are reduce-scattered as sums, not means: textgym's losses are already each process's share of
    the whole batch's (see [all_reduce_gradients][textgym.lm.distributed.all_reduce_gradients])."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or [])  # a Hugging Face model's block class names
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
    return model


def _fsdp_units(model: torch.nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered_for_generation(model: torch.nn.Module) -> Iterator[None]:
    """Hold an FSDP model's full weights for the block (one all-gather per unit, by every process together).

    Sampling runs a different number of forward passes on each process (episodes end at different steps, a
    row restarts when its episode ends), and a sharded forward is a collective: the processes would wait on
    each other's gathers for ever. With the weights gathered once, the forwards communicate nothing. Costs
    the full model's memory on every process while it lasts. A model without FSDP units is left alone.
    """
    units = _fsdp_units(model)
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(_fsdp_units(model))


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An FSDP model's whole state dict on the CPU of rank 0 (every process must call it; the others get an
    empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a whole state dict (as [full_state_dict][textgym.lm.distributed.full_state_dict] returns) into an FSDP
    model: each process keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def clip_grad_norm_(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients to a global L2 norm of ``max_norm``, and return the norm before clipping.

    Without sharded parameters it is ``torch.nn.utils.clip_grad_norm_``. With FSDP the norm adds each
    process's squared shard norms over the processes, plus the (replicated) rest once.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    sharded = [g.to_local() for g in grads if isinstance(g, DTensor)]  # this process's shards
    replicated = [g for g in grads if not isinstance(g, DTensor)]
    squares = torch.stack([g.float().pow(2).sum() for g in sharded]).sum()
    total = all_reduce_sum(squares)
    if replicated:
        total = total + torch.stack([g.float().pow(2).sum() for g in replicated]).sum().to(total.device)
    norm = total.sqrt()
    scale = min(1.0, max_norm / (norm.item() + 1e-6))
    if scale < 1.0:
        for g in grads:
            g.mul_(scale)  # a DTensor scales its own shard
    return norm
