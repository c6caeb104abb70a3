"""Hugging Face sequence classifiers as reward models: a local ``AutoModelForSequenceClassification`` directory.

Any classifier works: a one-logit reward model (trained by ``textgym reward train --backbone lm``, by TRL's
``RewardTrainer``, or elsewhere) scores with its logit; a multi-label classifier (e.g. a sentiment model) scores
with the probability of a chosen label. Only safetensors weights are loaded and remote code never runs unless
``trust_remote_code=True`` is passed, so loading a directory cannot execute code from it.

textgym stores what it needs besides the weights in the model's ``config.json``, under ``textgym_reward``: the
input format and the normalisation statistics. Other tools ignore that key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging

from reward_models.base import BatchedRewardModel, Normalization
from textgym.lm.models import resolve_model_dir

INPUT_FORMATS = ("concat", "chat", "completion")
"""How a pair becomes the classifier's input text: ``prompt + completion`` (the env's completions continue the
prompt), the tokenizer's chat template with the prompt as user and the completion as assistant turn (as TRL's
chat-format reward models expect), or the completion alone."""

CONFIG_KEY = "textgym_reward"


class HFClassifierReward(BatchedRewardModel):
    """A Hugging Face sequence classifier as a reward model; build it with
    [load][reward_models.hf_classifier.HFClassifierReward.load] or
    [from_backbone][reward_models.hf_classifier.HFClassifierReward.from_backbone].

    Args:
        model: a ``*ForSequenceClassification`` model.
        tokenizer: its tokenizer.
        input_format: one of [INPUT_FORMATS][reward_models.hf_classifier.INPUT_FORMATS].
        max_length: longer inputs lose tokens on the left, so the completion (the part being judged) is kept.
        label_index: ``None`` to score with the single logit; else the label whose probability is the score.
        normalization: statistics to standardise raw scores with, or ``None`` for raw scores.
        batch_size: pairs scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        name: the name errors and logs use.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        input_format: str = "concat",
        max_length: int = 512,
        label_index: int | None = None,
        normalization: Normalization | None = None,
        batch_size: int = 32,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(batch_size, device, normalization, name)
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}.")
        if input_format == "chat" and not tokenizer.chat_template:
            raise ValueError("input_format='chat' needs a tokenizer with a chat template; this one has none.")
        if tokenizer.pad_token is None:  # decoder-only tokenizers often lack one; any token works as padding
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:  # *ForSequenceClassification finds each row's last token by it
            model.config.pad_token_id = tokenizer.pad_token_id
        tokenizer.truncation_side = "left"  # keep the completion, the part being judged
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.input_format = input_format
        self.max_length = max_length
        self.label_index = label_index

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        label: int | str | None = None,
        input_format: str | None = None,
        max_length: int = 512,
        normalize: bool = True,
        trust_remote_code: bool = False,
        dtype: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
    ) -> HFClassifierReward:
        """Load a classifier directory (``config.json``, safetensors weights, tokenizer files).

        Args:
            path: the directory.
            label: ``None`` to score with the single logit (the model must have one label); else the label
                index or name (``config.label2id``) whose probability is the score.
            input_format: one of [INPUT_FORMATS][reward_models.hf_classifier.INPUT_FORMATS]; ``None`` takes the one
                stored with the model, else ``"concat"``.
            max_length: see the class.
            normalize: standardise scores with the statistics stored with the model, if any.
            trust_remote_code: run the model's own Python code from the directory; only for models you trust.
            dtype: torch dtype name to load the weights in (default float32).
            batch_size: pairs scored per forward pass.
            device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        """
        path = _checked_model_dir(path)
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        stored = getattr(config, CONFIG_KEY, None) or {}
        norm = stored.get("normalization") if normalize else None
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, use_safetensors=True, trust_remote_code=trust_remote_code, dtype=_dtype(dtype)
        )
        return cls(
            model,
            _load_tokenizer(path, trust_remote_code),
            input_format=input_format or stored.get("input_format") or "concat",
            max_length=max_length,
            label_index=_label_index(model.config, label, path),
            normalization=Normalization(**norm) if norm else None,
            batch_size=batch_size,
            device=device,
            name=path.name,
        )

    @classmethod
    def from_backbone(
        cls,
        model: str | os.PathLike | None = None,
        input_format: str = "concat",
        max_length: int = 512,
        batch_size: int = 32,
        device: str | None = None,
    ) -> HFClassifierReward:
        """A new one-logit reward model on a pretrained LM, its scalar head freshly initialised, for training.

        Args:
            model: a textgym model name (``None`` for the embedded SmolLM2, ``"tiny"``) or a local directory (see
                [textgym.lm.models.resolve_model_dir][textgym.lm.models.resolve_model_dir]); a causal LM gets the
                matching ``*ForSequenceClassification`` head, which scores the last token.
            input_format: one of [INPUT_FORMATS][reward_models.hf_classifier.INPUT_FORMATS].
            max_length: see the class.
            batch_size: pairs scored per forward pass.
            device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        """
        path = resolve_model_dir(model)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # silence "newly initialized: score.weight": a new head is the point here
        try:
            classifier = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
        finally:
            logging.set_verbosity(verbosity)
        return cls(classifier, _load_tokenizer(path, False), input_format, max_length, None, None, batch_size, device)

    def texts(self, prompts: list[str], completions: list[str]) -> list[str]:
        """The classifier's input texts for the pairs, in `input_format`."""
        if self.input_format == "completion":
            return list(completions)
        if self.input_format == "concat":
            return [p + c for p, c in zip(prompts, completions, strict=True)]
        return [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in zip(prompts, completions, strict=True)
        ]

    def forward(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Differentiable raw scores, shape ``(B,)``: the single logit (or the label's probability)."""
        batch = self.tokenizer(
            self.texts(prompts, completions),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=self.input_format != "chat",  # the chat template writes its own special tokens
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**batch).logits.float()  # (B, num_labels)
        return logits[:, 0] if self.label_index is None else logits.softmax(-1)[:, self.label_index]

    def score_batch(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.forward(prompts, completions).cpu().numpy()

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """All weights: the LM backbone is fine-tuned together with its scalar head."""
        return self.model.parameters()

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write the model in Hugging Face layout (safetensors), loadable by ``AutoModelForSequenceClassification`` and
        by [HFClassifierReward][reward_models.hf_classifier.HFClassifierReward] with its normalisation and input
        format."""
        out_dir = Path(out_dir)
        setattr(
            self.model.config,
            CONFIG_KEY,
            {
                "input_format": self.input_format,
                "normalization": self.normalization.to_dict() if self.normalization else None,
            },
        )
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        return out_dir


def _checked_model_dir(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} is not a Hugging Face model directory (no config.json). Save a classifier with "
            "`model.save_pretrained(dir)` and `tokenizer.save_pretrained(dir)`."
        )
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) or sorted(p.name for p in path.glob("*.pt"))
        raise FileNotFoundError(
            f"{str(path)!r} holds no .safetensors weights{f' (only {pickled})' if pickled else ''}. Pickled weights "
            "can run code when loaded, so textgym loads safetensors only: convert once, from a source you trust, "
            "with `AutoModelForSequenceClassification.from_pretrained(dir).save_pretrained(dir)`."
        )
    return path


def _load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"No usable tokenizer in {str(path)!r} ({err}). Save one next to the model: "
            "`tokenizer.save_pretrained(dir)`."
        ) from err


def _label_index(config: Any, label: int | str | None, path: Path) -> int | None:
    """``None`` for the single logit, else the index of ``label`` among the classifier's labels."""
    names = [config.id2label[i] for i in range(config.num_labels)]
    if label is not None and config.num_labels == 1:
        raise ValueError(f"{str(path)!r} has a single logit, which is the score; leave label unset.")
    if label is None:
        if config.num_labels != 1:
            raise ValueError(
                f"{str(path)!r} is a classifier with {config.num_labels} labels {names}; pass the label whose "
                f"probability is the reward, e.g. reward_model_kwargs={{'label': {names[-1]!r}}}."
            )
        return None
    if isinstance(label, str):
        if label not in config.label2id:
            raise ValueError(f"{str(path)!r} has no label {label!r}; its labels are {names}.")
        return int(config.label2id[label])
    if not 0 <= label < config.num_labels:
        raise ValueError(f"label index {label} is out of range for {str(path)!r}, whose labels are {names}.")
    return label


def _dtype(name: str | None) -> torch.dtype:
    if name is None:
        return torch.float32
    if not isinstance(getattr(torch, name, None), torch.dtype):
        raise ValueError(f"dtype must be a torch dtype name such as 'float32' or 'bfloat16', got {name!r}.")
    return getattr(torch, name)
