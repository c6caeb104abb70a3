"""The trainable policy: a causal LM with a scalar value head, its frozen reference, and whole-sequence passes.

Training never runs the model token by token: [ActorCritic.evaluate][agents.policy.ActorCritic.evaluate] scores every
completion token of a [RolloutBatch][agents.rollout.RolloutBatch] in one forward pass over the whole sequences (prompt
left-padded to ``P``, completion right-padded to ``T``), computing the output layer only on the positions that chose
one of the agent's tokens (in a conversation, not on the tokens the env wrote between its turns). Rows that share a
prompt (a GRPO group) run it once: one pass over the distinct prompts, then one over the completions on their copied
KV cache.

Dropout is off for good (the modules stay in eval mode, gradients flow all the same): the rollout engine samples
without dropout, so training with it would score the samples under another policy, and the first step's ratio
``π/π_old`` would not be 1. Log-probs come from one fused float32 log-softmax that reads the logits in the
dtype the pass wrote them (bfloat16 under autocast: no float32 copy of the logits, and one pass forward and
back instead of logsumexp's several), and passes without gradients run in chunks of rows, so memory is
bounded by the chunk, not the batch.
"""

from __future__ import annotations

import copy
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from textgym.lm.cache import CACHE_ARG, position_ids, select_cache_rows
from textgym.lm.distributed import is_sharded
from textgym.lm.seq2seq import seq2seq_inputs

VALUE_HEAD_FILE = "value_head.safetensors"
CRITIC_DIR = "critic"


@dataclass
class SequenceEval:
    """Per-token outputs over the completion positions, each ``(E, T)``."""

    logprobs: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None = None


class ActorCritic(nn.Module):
    """A causal LM policy, a value head, and (unless LoRA adapters are trained) a frozen reference copy.

    Args:
        lm: the policy's causal LM; it is trained in place.
        value_head: add a scalar value head (PPO); the critic-free methods (GRPO, RLOO) leave it out.
        separate_critic: give the value head its own trunk, a copy of ``lm``, instead of sharing the policy's.
        lora_rank: train LoRA adapters of this rank (via ``peft``) instead of all weights; the reference is
            then the same weights with the adapters switched off, so no copy of the trunk is made.
        reference_device: where the frozen reference copy lives (default: the policy's device).
    """

    def __init__(
        self,
        lm: PreTrainedModel,
        value_head: bool = True,
        separate_critic: bool = False,
        lora_rank: int = 0,
        reference_device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.device = next(lm.parameters()).device
        self.reference: PreTrainedModel | None = None
        if lora_rank > 0:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules="all-linear", lora_dropout=0.0)
            lm = get_peft_model(lm, lora)
        else:
            self.reference = copy.deepcopy(lm).to(reference_device or self.device).eval().requires_grad_(False)
        self.lm = lm
        self.critic_trunk = copy.deepcopy(lm) if (value_head and separate_critic) else None
        hidden = lm.config.get_text_config().hidden_size
        self.value_head = nn.Linear(hidden, 1).to(self.device) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)  # start at V = 0: no random value targets leak into GAE
            nn.init.zeros_(self.value_head.bias)
        self.eval()

    def train(self, mode: bool = True) -> ActorCritic:
        """Stays in eval mode whatever ``mode`` is: dropout must be off while training too (module docstring)."""
        return super().train(False)

    def value_parameters(self) -> list[nn.Parameter]:
        """The critic's own trainable parameters: the value head, and the separate critic trunk if any."""
        modules = [m for m in (self.value_head, self.critic_trunk) if m is not None]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    @property
    def uses_lora(self) -> bool:
        return self.reference is None

    @property
    def generator_model(self) -> PreTrainedModel:
        """The model the rollout engine samples with (the policy LM itself, adapters included)."""
        return self.lm

    def evaluate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_width: int,
        temperature: float = 1.0,
        with_values: bool = False,
        entropy_grad: bool = True,
        keep: torch.Tensor | None = None,
    ) -> SequenceEval:
        """Log-probs, entropies and (optionally) values of the last ``completion_width`` tokens of each row.

        ``values[:, t]`` estimates the return from the state before completion token ``t``. With
        ``entropy_grad=False`` the entropy is a metric only: computed without a graph, row by row. ``keep``
        ``(E, T)``: the positions whose log-probs and entropies are needed (the agent's actions); the others are 0,
        and the output layer runs on the kept positions only ([completion_logits][agents.policy.completion_logits]).
        """
        logits, hidden = completion_logits(
            self.lm, input_ids, attention_mask, completion_width, with_values and not self.critic_trunk, keep
        )
        logprobs, entropy = _logprobs_and_entropy(
            _tempered(logits, temperature), _kept(input_ids[:, -completion_width:], keep, logits), entropy_grad
        )
        logprobs, entropy = _unkept(logprobs, keep), _unkept(entropy, keep)
        values = None
        if with_values:
            if self.value_head is None:
                raise RuntimeError("This policy has no value head (built with value_head=False).")
            if self.critic_trunk is not None:
                _, hidden = completion_logits(self.critic_trunk, input_ids, attention_mask, completion_width, True)
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)  # (E, T)
        return SequenceEval(logprobs, entropy, values)

    @torch.no_grad()
    def evaluate_in_chunks(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_width: int,
        temperature: float = 1.0,
        with_values: bool = False,
        chunk_size: int = 8,
        keep: torch.Tensor | None = None,
    ) -> SequenceEval:
        """[evaluate][agents.policy.ActorCritic.evaluate] without gradients, ``chunk_size`` rows at a time: the
        full-vocabulary logits of only one chunk exist at once."""
        parts = [
            self.evaluate(input_ids[i : i + chunk_size], attention_mask[i : i + chunk_size], completion_width,
                          temperature, with_values, entropy_grad=False,
                          keep=None if keep is None else keep[i : i + chunk_size])
            for i in range(0, len(input_ids), chunk_size)
        ]  # fmt: skip
        values = torch.cat([p.values for p in parts]) if with_values else None
        return SequenceEval(torch.cat([p.logprobs for p in parts]), torch.cat([p.entropy for p in parts]), values)

    @torch.no_grad()
    def reference_logprobs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        completion_width: int,
        temperature: float = 1.0,
        chunk_size: int = 8,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Log-probs ``(E, T)`` of the completion tokens under the frozen reference model, ``chunk_size`` rows
        at a time (``keep``: as in [evaluate][agents.policy.ActorCritic.evaluate])."""
        if self.reference is None:  # LoRA: the base weights are the reference
            context = self.lm.disable_adapter()
            model = self.lm
        else:
            context = nullcontext()
            model = self.reference
        with context:
            logprobs = completion_logprobs(
                model, input_ids, attention_mask, completion_width, temperature, chunk_size, keep
            )
            return logprobs.to(self.device)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def shard(self) -> None:
        """Shard the policy LM and (when it shares the policy's device) the reference over the processes with FSDP2
        ([textgym.lm.distributed.fully_shard_model][textgym.lm.distributed.fully_shard_model]); the value head stays
        whole on every process."""
        from textgym.lm.distributed import fully_shard_model

        fully_shard_model(self.lm)
        if self.reference is not None and next(self.reference.parameters()).device == self.device:
            fully_shard_model(self.reference)

    def save(self, out_dir: str | os.PathLike, lm_weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the policy as a Hugging Face model directory (LoRA: a ``peft`` adapter directory), plus the
        value head as safetensors and, with a separate critic, its trunk under ``critic/``. ``lm_weights``: the
        LM's whole state dict when it is sharded (gathered by every process beforehand)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        self.lm.save_pretrained(out, state_dict=lm_weights)
        if self.value_head is not None:
            save_file({k: v.contiguous() for k, v in self.value_head.state_dict().items()}, out / VALUE_HEAD_FILE)
        if self.critic_trunk is not None:
            self.critic_trunk.save_pretrained(out / CRITIC_DIR)

    def load_weights(self, checkpoint_dir: str | os.PathLike) -> None:
        """Load trainable weights written by [save][agents.policy.ActorCritic.save] into this (identically built)
        policy."""
        from safetensors.torch import load_file

        src = Path(checkpoint_dir)
        if self.uses_lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.lm, load_file(src / "adapter_model.safetensors", device=str(self.device)))
        else:
            from textgym.lm.distributed import is_sharded, load_full_state_dict

            weights = _load_hf_weights(src, self.device)
            if is_sharded(self.lm):  # each process keeps its shard of the whole weights
                _check_fits(self.lm, weights, src)
                load_full_state_dict(self.lm, weights)
            else:
                _load_exactly(self.lm, weights, src)
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(src / VALUE_HEAD_FILE, device=str(self.device)))
        if self.critic_trunk is not None:
            _load_exactly(self.critic_trunk, _load_hf_weights(src / CRITIC_DIR, self.device), src / CRITIC_DIR)


@torch.no_grad()
def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    temperature: float = 1.0,
    chunk_size: int = 8,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs ``(E, T)`` of the last ``completion_width`` tokens of each row under ``model`` (on its device),
    by passes over whole sequences of ``chunk_size`` rows, without gradients; with ``keep`` ``(E, T)``, of the kept
    positions only (0 elsewhere)."""
    device = next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    keep = None if keep is None else keep.to(device=device, dtype=torch.bool)
    tokens = input_ids[:, -completion_width:]
    parts = []
    for i in range(0, len(input_ids), chunk_size):
        rows = slice(i, i + chunk_size)
        kept = None if keep is None else keep[rows]
        logits, _ = completion_logits(model, input_ids[rows], attention_mask[rows], completion_width, False, kept)
        parts.append(_unkept(_token_logprobs(_tempered(logits, temperature), _kept(tokens[rows], kept, logits)), kept))
    return torch.cat(parts)


def completion_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    need_hidden: bool,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(E, T, V)`` that chose each of the last ``T`` tokens, and the last hidden states there ``(E, T, H)``
    (an encoder–decoder's: ``_seq2seq_completion_logits``).

    Rows with the same prompt (a GRPO group) share one pass over it: the prompts run once each, their KV cache
    is copied to every row of theirs, and the completions run on it. The trunk then runs on ``U · P + E · T``
    positions instead of ``E · (P + T)``, and gradients reach the shared prompt through every row's copy. Not
    under FSDP: each pass gathers the weights with the other processes, so all must make the same passes.

    With ``keep`` ``(E, T)``, the logits of the kept positions only, ``(N, V)`` in ``keep``'s row-major order (and
    the hidden states always): the trunk runs as before, the output layer on the kept positions. In a multi-turn
    episode most completion positions are tokens the env wrote (a 6-turn game of ``GuessNumber-v1``'s level 1: 6
    actions among 97 tokens), so the full-vocabulary logits, the pass's largest tensors by far, shrink as much.
    Where the model's output is not simply its output layer on its decoder's hidden states (a logit soft-cap, a
    scale; [selects_logits][agents.policy.selects_logits]), or under FSDP, ``keep`` is ignored and all ``T``
    positions' logits come back.
    """
    if model.config.is_encoder_decoder:
        # Every position's logits: the decoder's positions are all the agent's (no multi-turn games).
        return _seq2seq_completion_logits(model, input_ids, attention_mask, completion_width, need_hidden)
    select = keep is not None and not is_sharded(model) and selects_logits(model)
    trunk = model.get_decoder() if select else model
    need_hidden = need_hidden and not select  # selecting: the trunk's output is the hidden states

    def run(columns: int, **inputs: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
        """The pass, its last ``columns`` outputs (logits; hidden states when selecting) and hidden states."""
        if select:
            out = trunk(**inputs)
            return out, out.last_hidden_state[:, -columns:], None
        out = trunk(**inputs, logits_to_keep=columns, output_hidden_states=need_hidden)
        return out, out.logits, out.hidden_states[-1][:, -columns:] if need_hidden else None

    positions = position_ids(attention_mask)  # (E, P + T)
    prompt_width = input_ids.shape[1] - completion_width
    prompts, copies = torch.unique(  # (U, 2P) the distinct prompts (tokens and mask), (E,) each row's
        torch.cat([input_ids[:, :prompt_width], attention_mask[:, :prompt_width]], dim=1), dim=0, return_inverse=True
    )
    with whole_sequence_attention(input_ids.device):
        if len(prompts) == len(input_ids) or completion_width < 2 or is_sharded(model):
            # The output layer runs on T + 1 columns, not P + T; column P + t - 1 predicts token t.
            _, outputs, hidden = run(
                completion_width + 1,
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions,
                use_cache=False,
            )
            outputs, hidden = outputs[:, :-1], None if hidden is None else hidden[:, :-1]  # (E, T, ·)
        else:
            prompt_mask = prompts[:, prompt_width:]
            head, head_outputs, head_hidden = run(
                1,  # the last prompt column predicts completion token 0
                input_ids=prompts[:, :prompt_width],
                attention_mask=prompt_mask,
                position_ids=position_ids(prompt_mask),
                **{CACHE_ARG: DynamicCache()},
                use_cache=True,
            )
            _, tail_outputs, tail_hidden = run(  # completion tokens 0 .. T - 2 predict tokens 1 .. T - 1
                completion_width - 1,
                input_ids=input_ids[:, prompt_width:-1],
                attention_mask=attention_mask[:, :-1],
                position_ids=positions[:, prompt_width:-1],
                **{CACHE_ARG: select_cache_rows(head[CACHE_ARG], copies)},
                use_cache=True,
            )
            outputs = torch.cat([head_outputs[copies], tail_outputs], dim=1)  # (E, T, ·)
            hidden = None if head_hidden is None else torch.cat([head_hidden[copies], tail_hidden], dim=1)
    if not select:
        return outputs, hidden
    return model.get_output_embeddings()(outputs[keep]), outputs  # (N, V) and the hidden states (E, T, H)


@torch.no_grad()
def selects_logits(model: PreTrainedModel) -> bool:
    """Whether ``model``'s logits are its output layer applied to its decoder's last hidden states, so that
    [completion_logits][agents.policy.completion_logits] may run the output layer on chosen positions only.

    Checked once per model (its config may add a logit soft-cap or scale that the class alone does not tell) on a
    four-token input, and remembered on the model; models that fail keep computing every position's logits."""
    if not hasattr(model, "_selects_logits"):
        try:
            vocab = model.get_output_embeddings().weight.shape[0]
            ids = (torch.arange(1, 5, device=next(model.parameters()).device) % vocab)[None]  # not padding
            whole = model(input_ids=ids, use_cache=False).logits
            hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
            selects = torch.allclose(model.get_output_embeddings()(hidden), whole, atol=1e-4, rtol=1e-4)
        except (AttributeError, NotImplementedError, TypeError):  # no get_decoder / get_output_embeddings
            selects = False
        model._selects_logits = selects
    return model._selects_logits


def _kept(tokens: torch.Tensor, keep: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The tokens whose logits ``logits`` holds: ``tokens[keep]`` when the logits were selected (two dimensions)."""
    return tokens[keep] if logits.dim() == 2 else tokens


def _unkept(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Per-token ``values`` back to ``(E, T)``, 0 where not kept, if they are of the kept positions only."""
    if keep is None or values.dim() == 2:
        return values
    return torch.zeros(keep.shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)


def _seq2seq_completion_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_width: int,
    need_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An encoder–decoder's [completion_logits][agents.policy.completion_logits]: the prompt is the encoder's
    source, and the decoder, teacher-forced on the start token and the completion, gives the logits and its last
    hidden states ``(E, T, ·)``. Rows with the same prompt (a GRPO group) share one encoder pass, as the causal
    path shares its prompt pass (not under FSDP)."""
    inputs = seq2seq_inputs(input_ids, attention_mask, completion_width, model.config.decoder_start_token_id)
    with whole_sequence_attention(input_ids.device):
        if is_sharded(model):  # one call of the model's own forward, which gathers the root unit's weights
            out = model(**inputs, output_hidden_states=need_hidden, use_cache=False)
            return out.logits, out.decoder_hidden_states[-1] if need_hidden else None
        source, source_mask = inputs.pop("input_ids"), inputs["attention_mask"]
        prompts, copies = torch.unique(torch.cat([source, source_mask], dim=1), dim=0, return_inverse=True)  # (U, 2P)
        width = source.shape[1]
        encoded = model.get_encoder()(input_ids=prompts[:, :width], attention_mask=prompts[:, width:])
        out = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded.last_hidden_state[copies]),  # (E, P, H)
            **inputs,
            output_hidden_states=need_hidden,
            use_cache=False,
        )
    return out.logits, out.decoder_hidden_states[-1] if need_hidden else None  # (E, T, V), (E, T, H)


def whole_sequence_attention(device: torch.device) -> AbstractContextManager:
    """The attention kernel of the passes over whole sequences. Under bfloat16 autocast on a CPU, PyTorch's plain
    (math) attention: the fused flash kernel's backward is slow there (one layer's attention over 8 × 52 tokens
    of the embedded model, forward and backward, one Xeon thread: 10.7 ms fused, 4.2 ms math; in float32 3.5
    and 3.9), which costs its faster forward back many times over. Elsewhere PyTorch's choice. Every policy
    and reference pass goes through here, so π_old's, the update's and the reference's log-probs come from the
    same kernel."""
    bf16_autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if device.type != "cpu" or not bf16_autocast:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def _tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``, divided in float32; at temperature 1 the logits themselves, not a copy."""
    return logits if temperature == 1.0 else logits.float() / temperature


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Float32 log-probabilities over the last dimension, whatever the logits' dtype (the cast is fused in)."""
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32)


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[token]``, ``(E, T)`` (or ``(N,)`` for logits ``(N, V)``)."""
    return _log_softmax(logits).gather(-1, tokens[..., None]).squeeze(-1)


def _logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, entropy_grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs and entropies ``(E, T)`` from one log-softmax; without ``entropy_grad`` the entropy is
    computed row by row without a graph, so it costs one row's ``(T, V)`` temporaries instead of the batch's.
    Logits ``(N, V)`` of selected positions give ``(N,)``."""
    logp = _log_softmax(logits)
    logprobs = logp.gather(-1, tokens[..., None]).squeeze(-1)
    if entropy_grad:
        return logprobs, _entropy(logp)
    with torch.no_grad():  # a row (T, V) at a time, or 256 of the kept positions' (N, V)
        return logprobs, torch.cat([_entropy(part) for part in logp.detach().split(1 if logp.dim() == 3 else 256)])


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """``H = −Σ p·log p`` over the last dimension, from log-probabilities."""
    return -(logp.exp() * logp).sum(dim=-1)


def _load_hf_weights(model_dir: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    files = [f for f in files if f.name != VALUE_HEAD_FILE]
    if not files:
        raise FileNotFoundError(f"No model weights (*.safetensors) in {model_dir}.")
    weights: dict[str, torch.Tensor] = {}
    for file in files:
        weights.update(load_file(file, device=str(device)))
    return weights


def _load_exactly(model: PreTrainedModel, weights: dict[str, torch.Tensor], src: Path) -> None:
    """Load a checkpoint's weights; only an output layer tied to the input embeddings may be absent."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    _raise_unless_fits(model, missing, unexpected, src)


def _check_fits(model: PreTrainedModel, weights: dict[str, torch.Tensor], src: Path) -> None:
    """`_load_exactly`'s check, by names, for a model that loads another way (FSDP)."""
    ours = set(model.state_dict())
    _raise_unless_fits(model, sorted(ours - set(weights)), sorted(set(weights) - ours), src)


def _raise_unless_fits(model: PreTrainedModel, missing: list[str], unexpected: list[str], src: Path) -> None:
    tied = model.config.get_text_config().tie_word_embeddings
    aliases, loaded = _tied_names(model), set(model.state_dict()) - set(missing)
    missing = [key for key in missing if not (tied and key.endswith("lm_head.weight")) and not aliases[key] & loaded]
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint in {src} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}): "
            "it was written for another model."
        )


def _tied_names(model: PreTrainedModel) -> dict[str, set[str]]:
    """Each state-dict name → the other names of the same tensor: a checkpoint holds a tied weight once (T5's
    encoder and decoder embeddings are its ``shared`` embedding)."""
    groups: dict[int, set[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), set()).add(name)
    return {name: names - {name} for names in groups.values() for name in names}
