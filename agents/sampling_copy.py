"""The bfloat16 copy of the policy that the rollout engine samples with under ``precision="bf16"``.

Autocast would cast every float32 weight again at each decode step; the copy is cast once per rollout, when
[copy_weights][agents.sampling_copy.copy_weights] refreshes it from the trained weights. On a CPU its linear layers also
keep their weights pre-packed in oneDNN's blocked layout ([PackedLinear][agents.sampling_copy.PackedLinear]): a plain
``F.linear`` lays the weight out anew at every call, which at a decode step's few rows costs about as much as the
product itself. Its attention groups a decode step's query heads by the key/value head they share
([grouped_decode_attention][agents.sampling_copy.grouped_decode_attention]).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward


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


GROUPED_DECODE_ATTENTION = "textgym_grouped_decode"
"""The attention implementation of the sampling copy: transformers' ``sdpa`` with decode steps grouped."""


def grouped_decode_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except for one query token and no mask (every row's context fully
    attended, as a GRPO group's shared prompt is): its query heads become the rows of the key/value head they
    share, ``(B, kv_heads, groups, d)``, instead of SDPA's ``enable_gqa``, which on a CPU in bfloat16 is several
    times slower for equal outputs (8 rows, 48 keys, the embedded model's 9 query and 3 key/value heads, one
    EPYC thread: 360 against 85 µs a layer). transformers groups the heads so itself when there is a mask."""
    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1 or attention_mask is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, _, dim = query.shape
    grouped = query.reshape(batch, heads // groups, groups, dim)  # (B, kv_heads, groups, d)
    out = F.scaled_dot_product_attention(grouped, key, value, scale=kwargs.get("scaling"))  # (B, kv_heads, groups, d)
    return out.reshape(batch, 1, heads, dim), None  # (B, 1, heads, d), as sdpa_attention_forward returns


def _use_grouped_decode_attention(model: nn.Module) -> None:
    """Switch ``model`` from ``sdpa`` to [grouped_decode_attention][agents.sampling_copy.grouped_decode_attention]
    (other implementations stay)."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_DECODE_ATTENTION, grouped_decode_attention)
    AttentionMaskInterface.register(GROUPED_DECODE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(GROUPED_DECODE_ATTENTION)


def can_pack() -> bool:
    """Whether oneDNN's packed bfloat16 linear layers run on this CPU."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def bfloat16_copy(model: nn.Module, pack_rows: int | None = None) -> nn.Module:
    """A frozen copy of ``model`` with bfloat16 parameters (tied ones still tied), never holding a float32 copy; buffers
    keep their dtype (rotary frequencies rounded to bfloat16 would shift every position). Its ``sdpa`` attention becomes
    [grouped_decode_attention][agents.sampling_copy.grouped_decode_attention].

    ``pack_rows``: replace every ``nn.Linear`` by a [PackedLinear][agents.sampling_copy.PackedLinear] for calls of about
    that many rows (on a CPU where [can_pack][agents.sampling_copy.can_pack]); ``None`` keeps plain layers.
    """
    memo = {id(p): nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False) for p in model.parameters()}
    clone = copy.deepcopy(model, memo)
    _use_grouped_decode_attention(clone)
    if pack_rows is not None:
        linears = [(name, m) for name, m in clone.named_modules() if type(m) is nn.Linear]
        for name, linear in linears:
            clone.set_submodule(name, PackedLinear(linear, pack_rows))
    return clone


@torch.no_grad()
def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy ``source``'s weights into ``target``, a [bfloat16_copy][agents.sampling_copy.bfloat16_copy] of the same
    architecture, casting to ``target``'s dtypes (and packing its packed layers)."""
    sources = dict(source.named_parameters(remove_duplicate=False))
    for name, param in target.named_parameters():
        param.copy_(sources[name])
    for name, module in target.named_modules():
        if isinstance(module, PackedLinear):
            module.load(source.get_submodule(name).weight)
