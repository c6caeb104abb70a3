"""Supervised instruction tuning (SFT), the first step of the InstructGPT pipeline.

Data is JSONL, one example per line: ``{"prompt": ..., "completion": ...}`` or chat
``{"messages": [{"role": ..., "content": ...}, ...]}`` whose last message (the assistant's) is the
completion. The loss is the cross-entropy of the completion tokens only.

SFT teaches exactly what ``TextGen-v0`` with the same ``chat_template`` asks for: prompts are encoded by the env's own
function ([textgym.lm.prompts.encode_prompt][textgym.lm.prompts.encode_prompt]), so their tokens are the env's
observations, and every reply ends with one of the env's stop tokens
([textgym.lm.prompts.stop_token_ids][textgym.lm.prompts.stop_token_ids]): with the chat
template, the template's end-of-turn token (what follows it is cut, as the env stops there); without it, EOS.

Under ``torchrun`` it is data-parallel: every process shuffles the examples alike and takes every
``world_size``-th example of each batch; the loss is normalised by the batch's completion tokens over all
processes and the gradients are summed, so each step is the single-process step (docs/distributed.md).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.optim import make_optimizer
from textgym.lm import distributed as dist
from textgym.lm.jsonl import read_jsonl
from textgym.lm.prompts import encode_prompt, pad_token_id, stop_token_ids

SHIPPED_DATA = {"instructions": Path(__file__).parent / "data" / "instructions.jsonl"}
IGNORE = -100  # label of tokens the loss skips (prompt and padding)


@dataclass
class SFTConfig:
    """Settings of supervised fine-tuning."""

    learning_rate: float = 5e-5
    """AdamW step size."""
    epochs: int = 2
    """Passes over the data."""
    batch_size: int = 8
    """Examples per gradient step (over all processes of a distributed run)."""
    max_length: int = 256
    """Longest prompt + completion in tokens; longer examples are an error unless ``truncate`` is set."""
    truncate: bool = False
    """Cut over-long examples to ``max_length`` (keeping the end of the prompt and the start of the completion)."""
    chat_template: bool | None = None
    """Wrap prompts in the tokenizer's chat template; ``None`` uses it when the tokenizer has one."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    seed: int = 0
    """Seeds the order of examples."""
    device: str | None = None
    """Default ``cuda`` when available, else ``cpu``."""


def load_sft_examples(source: str | os.PathLike | list[dict[str, Any]]) -> list[tuple[list[dict[str, str]], str]]:
    """Read examples as ``(prompt messages, completion)``; ``source`` is a shipped name, a JSONL path or dicts.

    Raises:
        ValueError: naming the file and line of a malformed example.
    """
    if isinstance(source, list):
        examples = []
        for i, record in enumerate(source):
            try:
                examples.append(_example(record))
            except ValueError as err:
                raise ValueError(f"example {i}: {err}.") from err
    else:
        path = SHIPPED_DATA.get(str(source), Path(source))
        if not path.is_file():
            raise FileNotFoundError(f"No SFT data at {path}: pass a JSONL file or one of {sorted(SHIPPED_DATA)}.")
        examples = read_jsonl(path, _example, skip_blank=True)  # a bad line: "file:line: why"
    if not examples:
        raise ValueError(f"No examples in {source}.")
    return examples


def _example(record: Any) -> tuple[list[dict[str, str]], str]:
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
        ok = isinstance(messages, list) and len(messages) >= 2 and all(isinstance(m, dict) for m in messages)
        if not ok or messages[-1].get("role") != "assistant" or not messages[-1].get("content"):
            raise ValueError("'messages' must be a list of at least two, the last an assistant message")
        return [dict(m) for m in messages[:-1]], messages[-1]["content"]
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        if not record["prompt"].strip() or not record["completion"].strip():
            raise ValueError("empty prompt or completion")
        return [{"role": "user", "content": record["prompt"]}], record["completion"]
    raise ValueError(f"expected {{'prompt': str, 'completion': str}} or {{'messages': [...]}}, got {record!r}")


class SFT:
    """Fine-tune a causal LM, or an encoder–decoder (the prompt its source), on instruction data, loss on completion
    tokens only.

    Example::

        sft = SFT(None, "instructions", epochs=1)   # the embedded model on the shipped instructions
        sft.learn()
        sft.save("runs/sft")                         # then PPO("runs/sft", envs)
    """

    def __init__(
        self,
        model: str | os.PathLike | None,
        data: str | os.PathLike | list[dict[str, Any]],
        config: SFTConfig | None = None,
        **overrides: Any,
    ) -> None:
        from textgym.lm.models import load_lm, load_tokenizer, resolve_device, resolve_model_dir

        self.config = replace(config or SFTConfig(), **overrides)
        c = self.config
        dist.init_distributed()  # joins the launcher's process group; nothing without one
        dist.check_same_on_all_ranks("configuration", {**asdict(c), "device": None, "model": model, "data": data})
        self.device = torch.device(resolve_device(c.device))
        with dist.main_process_first():  # rank 0 builds a cached model before the others look for it
            self.tokenizer = load_tokenizer(model)
        self.use_template = c.chat_template if c.chat_template is not None else bool(self.tokenizer.chat_template)
        if self.use_template and not self.tokenizer.chat_template:
            raise ValueError("chat_template=True, but this model's tokenizer has no chat template.")
        self.stop_token_ids = stop_token_ids(self.tokenizer, resolve_model_dir(model), self.use_template)
        self.examples = self.encode(data)
        self.model = load_lm(model, device=self.device)
        self.optimizer = make_optimizer(list(self.model.parameters()), c.learning_rate, self.device)
        self.rng = np.random.default_rng(c.seed)
        self.losses: list[float] = []

    def encode(self, data: str | os.PathLike | list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
        """Token ids ``(prompt, completion)`` of each example of ``data``."""
        return [self._encode(messages, completion) for messages, completion in load_sft_examples(data)]

    def _encode(self, messages: list[dict[str, str]], completion: str) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        prompt_ids = encode_prompt(tok, messages, self.use_template)
        reply = completion
        if self.use_template:
            prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            full = tok.apply_chat_template([*messages, {"role": "assistant", "content": completion}], tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(
                    "The chat template does not extend the prompt with the reply; use chat_template=False."
                )
            reply = full[len(prompt) :]
        reply_ids = self._end_at_stop_token(tok(reply, add_special_tokens=False)["input_ids"])
        excess = len(prompt_ids) + len(reply_ids) - self.config.max_length
        if excess > 0:
            if not self.config.truncate:
                raise ValueError(
                    f"An example is {excess} tokens longer than max_length={self.config.max_length} "
                    f"(prompt {messages[-1]['content'][:60]!r}...): raise max_length or set truncate=True."
                )
            cut = min(excess, len(prompt_ids) - 1)
            prompt_ids = prompt_ids[cut:]
            reply_ids = reply_ids[: self.config.max_length - len(prompt_ids)]
        return prompt_ids, reply_ids

    def _end_at_stop_token(self, reply_ids: list[int]) -> list[int]:
        """The reply up to its first stop token (the env ends the episode there), else with EOS appended."""
        stops = [i for i, token in enumerate(reply_ids) if token in self.stop_token_ids]
        if stops:
            return reply_ids[: stops[0] + 1]
        eos = self.tokenizer.eos_token_id
        return reply_ids if eos is None else [*reply_ids, eos]

    def learn(self, progress_bar: bool = True) -> SFT:
        """Train for ``epochs`` passes; the mean loss of each step is appended to ``self.losses``."""
        from tqdm.auto import tqdm

        c = self.config
        steps = c.epochs * -(-len(self.examples) // c.batch_size)
        rank, world = dist.rank(), dist.world_size()
        self.model.train()
        with tqdm(total=steps, desc="sft", unit="step", disable=not (progress_bar and dist.is_main())) as bar:
            for _ in range(c.epochs):
                order = self.rng.permutation(len(self.examples))  # the same on every process
                for start in range(0, len(order), c.batch_size):
                    batch = [self.examples[i] for i in order[start : start + c.batch_size]]
                    # This process's examples (all of them with one process), normalised by the whole batch's
                    # completion tokens, so the summed gradients are those of the batch's mean loss.
                    tokens = sum(len(reply) for _, reply in batch)
                    share = self.loss(batch[rank::world], tokens) if batch[rank::world] else None
                    if share is not None:
                        share.backward()  # a process without examples contributes zero gradients
                    dist.all_reduce_gradients(list(self.model.parameters()))
                    loss = dist.all_reduce_sum(torch.zeros(()) if share is None else share.detach().cpu())
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)  # freed now: the next forward runs without them
                    self.losses.append(loss.item())
                    bar.update()
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        self.model.eval()
        return self

    def loss(self, examples: list[tuple[list, list]], num_tokens: int | None = None) -> torch.Tensor:
        """Mean cross-entropy of the completion tokens of ``examples`` (one forward pass, right-padded); with
        ``num_tokens``, their summed cross-entropy divided by it (a process's share of a larger batch)."""
        if self.model.config.is_encoder_decoder:
            return self._seq2seq_loss(examples, num_tokens)
        width = max(len(p) + len(r) for p, r in examples)
        pad = pad_token_id(self.tokenizer)
        ids = torch.full((len(examples), width), pad, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (prompt, reply) in enumerate(examples):
            n = len(prompt) + len(reply)
            ids[row, :n] = torch.tensor(prompt + reply)
            labels[row, len(prompt) : n] = torch.tensor(reply)
            mask[row, :n] = 1
        extra = {} if num_tokens is None else {"num_items_in_batch": num_tokens}
        out = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), labels=labels.to(self.device), **extra
        )
        return out.loss

    def _seq2seq_loss(self, examples: list[tuple[list, list]], num_tokens: int | None) -> torch.Tensor:
        """[loss][agents.sft.SFT.loss] of an encoder–decoder: the encoder reads the prompt, the decoder is
        teacher-forced on the reply, from rows laid out as a rollout batch's (the policy's passes read them alike)."""
        from textgym.lm.seq2seq import seq2seq_inputs

        prompt_width, width = max(len(p) for p, _ in examples), max(len(r) for _, r in examples)
        ids = torch.full((len(examples), prompt_width + width), pad_token_id(self.tokenizer), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        for row, (prompt, reply) in enumerate(examples):
            ids[row, prompt_width - len(prompt) : prompt_width + len(reply)] = torch.tensor(prompt + reply)
            mask[row, prompt_width - len(prompt) : prompt_width + len(reply)] = 1
            labels[row, : len(reply)] = torch.tensor(reply)
        inputs = seq2seq_inputs(ids, mask, width, self.model.config.decoder_start_token_id)
        logits = self.model(**{k: v.to(self.device) for k, v in inputs.items()}).logits  # (E, R, V)
        labels = labels.to(self.device)
        total = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        return total / (num_tokens if num_tokens is not None else (labels != IGNORE).sum())

    @torch.no_grad()
    def evaluate(self, data: str | os.PathLike | list[dict[str, Any]] | None = None) -> float:
        """Mean completion loss on ``data`` (default: the training data)."""
        examples = self.examples if data is None else self.encode(data)
        size = self.config.batch_size
        losses = [self.loss(examples[i : i + size]).item() for i in range(0, len(examples), size)]
        return float(np.mean(losses))

    def save(self, path: str | os.PathLike) -> None:
        """Write a Hugging Face model directory (weights and tokenizer), the starting point of PPO/GRPO/RLOO.
        Distributed, rank 0 writes (the weights are the same on every process)."""
        if not dist.is_main():
            return
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
