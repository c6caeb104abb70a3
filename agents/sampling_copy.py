"""The bfloat16 copy of the policy that the rollout engine samples with under ``precision="bf16"``.

Autocast would cast every float32 weight again at each decode step; the copy is cast once per rollout, when
:func:`copy_weights` refreshes it from the trained weights. On a CPU its linear layers also keep their weights
pre-packed in oneDNN's blocked layout (:class:`PackedLinear`): a plain ``F.linear`` lays the weight out anew
at every call, which at a decode step's few rows costs about as much as the product itself.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class PackedLinear(nn.Module):
    """A frozen bfloat16 ``nn.Linear`` whose weight is stored pre-packed for oneDNN, for a CPU.

    Its outputs equal ``F.linear``'s bit for bit. The linear layers of one decode step of the embedded model at
    batch 8, one Xeon thread (AMX): 42.5 ms plain, 29.9 ms packed; packing all of them takes about 0.15 s, paid
    once per rollout.

    Args:
        linear: the layer to copy (any dtype; its weight is rounded to bfloat16).
        rows_hint: the rows a call usually has (the decode batch), for oneDNN's choice of layout.
    """

    def __init__(self, linear: nn.Linear, rows_hint: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rows_hint = linear.in_features, linear.out_features, rows_hint
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.load(linear.weight)

    @torch.no_grad()
    def load(self, weight: torch.Tensor) -> None:
        """Pack ``weight`` ``(out, in)``, rounded to bfloat16, as this layer's weight."""
        rounded = weight.detach().to(torch.bfloat16).contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(rounded, self.rows_hint)

    @property
    def weight(self) -> torch.Tensor:
        """The weight in the plain layout (a new tensor: writing to it changes nothing)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def can_pack() -> bool:
    """Whether oneDNN's packed bfloat16 linear layers run on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def bfloat16_copy(model: nn.Module, pack_rows: int | None = None) -> nn.Module:
    """A frozen copy of ``model`` with bfloat16 parameters (tied ones still tied), never holding a float32 copy;
    buffers keep their dtype (rotary frequencies rounded to bfloat16 would shift every position).

    ``pack_rows``: replace every ``nn.Linear`` by a :class:`PackedLinear` for calls of about that many rows (on
    a CPU where :func:`can_pack`); ``None`` keeps plain layers.
    """
    memo = {id(p): nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False) for p in model.parameters()}
    clone = copy.deepcopy(model, memo)
    if pack_rows is not None:
        linears = [(name, m) for name, m in clone.named_modules() if type(m) is nn.Linear]
        for name, linear in linears:
            clone.set_submodule(name, PackedLinear(linear, pack_rows))
    return clone


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s weights into ``target``, a :func:`bfloat16_copy` of the same architecture, casting
    to ``target``'s dtypes (and packing its packed layers)."""
    sources = dict(source.named_parameters(remove_duplicate=False))
    for name, param in target.named_parameters():
        param.copy_(sources[name])
    for name, module in target.named_modules():
        if isinstance(module, PackedLinear):
            module.load(source.get_submodule(name).weight)
