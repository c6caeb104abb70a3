"""Training reward models from preferences with the Bradley–Terry loss, and measuring their pairwise accuracy.

For a pair where ``y_w`` was preferred over ``y_l`` as a completion of ``x``, the loss is
``-log σ(r(x, y_w) - r(x, y_l) - m)``, ``m`` being the pair's margin (0 unless the data or the config sets one).
Batches hold whole prompts, so every pair of one ranking lands in the same batch and each completion is scored
once per batch however many pairs it appears in (InstructGPT's trick that makes rankings cheap).

The held-out split is by prompt; its pairwise accuracy and loss are reported after every epoch and at the end.
Early stopping, on by default whenever prompts are held out, keeps the weights of the epoch with the best held-out
accuracy rather than the last epoch's (a small head on a few hundred noisy pairs overfits within a few epochs), and
with ``patience`` stops once that many epochs in a row have not beaten it. After training, the raw scores of the
training completions under the kept weights give the mean and std stored with the model, so its rewards come out
standardised.

    from reward_models.training import TrainConfig, train_reward_model

    result = train_reward_model("prefs.jsonl", TrainConfig(backbone="minilm"), out_dir="my-rm")
    print(result.report["eval"]["accuracy"])

Under ``torchrun`` training is data-parallel: every process draws the same batches and scores the prompts of
each batch that fall to it (whole prompts, round robin); the loss is normalised by the batch's pair count and
the gradients summed over the processes, so each step is the single-process step (with ``dropout=0``: dropout
masks are drawn per process). Every process scores the whole held-out split with the same weights, and the
epoch's held-out figures are then taken from rank 0 on all of them, so that every process keeps and stops at the
same epoch. Only rank 0 saves.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reward_models.base import Normalization, RewardFn
from reward_models.preferences import PreferencePair, load_preferences, split_by_prompt
from textgym.lm import distributed as dist

if TYPE_CHECKING:  # torch loads only when training starts, so the CLI and the config stay light
    import torch

    from reward_models.hf_classifier import HFClassifierReward
    from reward_models.learned import EncoderHeadReward

BACKBONES = ("minilm", "lm")


@dataclass
class TrainConfig:
    """How to train a reward model; every field is also a ``textgym reward train`` option."""

    backbone: str = "minilm"
    """``"minilm"``: a small head on the frozen packaged MiniLM encoder (fast on CPU); ``"lm"``: a causal LM
    fine-tuned whole with a scalar head."""
    model: str | None = None
    """The backbone's weights: for ``minilm`` an encoder directory (default: the packaged MiniLM); for ``lm``
    ``"tiny"``, a local model directory, or the default, the embedded SmolLM2-135M-Instruct."""
    epochs: int | None = None
    """Passes over the training pairs (default: 30 for ``minilm``, 1 for ``lm``)."""
    lr: float | None = None
    """AdamW learning rate (default: 1e-3 for ``minilm``, 1e-5 for ``lm``)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    batch_size: int = 32
    """Pairs per optimiser step (whole prompts per batch; a prompt with more pairs is cut into chunks)."""
    margin: float = 0.0
    """Margin added to every pair's own (the loss asks ``r_w - r_l`` to exceed it)."""
    eval_fraction: float = 0.1
    """Share of prompts held out to measure pairwise accuracy (and to pick the epoch to keep); 0 trains on
    everything."""
    early_stopping: bool | None = None
    """Keep the weights of the epoch with the best held-out pairwise accuracy (ties: the lower held-out loss, then
    the earlier epoch) instead of the last epoch's. ``None`` (default): on when ``eval_fraction > 0``; with
    ``eval_fraction`` 0 there is nothing to choose on, so every epoch runs and the last is kept. ``True``: on, and
    an error without a held-out split. ``False``: keep the last epoch."""
    patience: int | None = None
    """With early stopping: stop after this many epochs in a row without a new best epoch; ``None`` runs every
    epoch (and still keeps the best)."""
    hidden_size: int = 256
    """``minilm``: the head's hidden width; 0 for a linear head."""
    dropout: float = 0.1
    """``minilm``: dropout on the head's inputs and hidden layer while training."""
    use_prompt: bool = True
    """``minilm``: let the head see the prompt's embedding as well as the completion's."""
    input_format: str = "concat"
    """``lm``: the model's input, ``"concat"`` (prompt + completion), ``"chat"`` or ``"completion"``."""
    max_length: int = 256
    """Tokens per input text; longer ones are cut (the ``lm`` backbone keeps their end)."""
    device: str | None = None
    """Torch device; default ``"cuda"`` when available, else ``"cpu"``."""
    seed: int = 0
    """Seeds the split, the head's initialisation, the batch order and dropout: equal seeds, equal models."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}.")
        if self.epochs is None:
            self.epochs = 30 if self.backbone == "minilm" else 1
        if self.lr is None:
            self.lr = 1e-3 if self.backbone == "minilm" else 1e-5
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs and batch_size must be >= 1 and lr > 0; got {self}.")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 epoch, or None to run every epoch; got {self.patience}.")
        asked = self.early_stopping or self.patience is not None  # explicitly, rather than by the default
        if asked and self.eval_fraction == 0:
            raise ValueError(
                "Early stopping (early_stopping=True or a patience) picks the epoch on held-out prompts, but "
                "eval_fraction is 0: hold some out (e.g. eval_fraction=0.1, --eval-fraction 0.1) or leave "
                "early_stopping and patience unset to train every epoch on all the data."
            )
        if self.early_stopping is False and self.patience is not None:
            raise ValueError(f"patience={self.patience} needs early stopping; drop it or set early_stopping=True.")

    @property
    def keeps_best_epoch(self) -> bool:
        """Whether training keeps the best held-out epoch (early stopping on), ``early_stopping`` resolved."""
        return self.early_stopping if self.early_stopping is not None else self.eval_fraction > 0


@dataclass
class PairwiseReport:
    """How often a reward model ranks the preferred completion first, on a set of pairs."""

    accuracy: float
    """Share of pairs with ``r(chosen) > r(rejected)``; a tie counts one half."""
    mean_gap: float
    """Mean of ``r(chosen) - r(rejected)`` in the model's own (normalised, if it normalises) units."""
    pairs: int
    """Pairs compared."""
    prompts: int
    """Distinct prompts among them."""

    def __str__(self) -> str:
        return f"pairwise accuracy {self.accuracy:.3f} on {self.pairs} pairs of {self.prompts} prompts"


@dataclass
class TrainResult:
    """The trained model and what happened while training it."""

    model: EncoderHeadReward | HFClassifierReward
    report: dict[str, Any] = field(default_factory=dict)
    """``config``, ``train``/``eval`` [PairwiseReport][reward_models.training.PairwiseReport] dicts of the kept
    weights, ``history`` (every epoch run: ``loss``, and with a held-out split ``eval_accuracy`` and ``eval_loss``),
    ``best_epoch`` (the best held-out epoch; ``None`` without a held-out split), ``kept_epoch`` (the epoch whose
    weights the model holds: ``best_epoch`` with early stopping, else the last), ``seconds``."""


def pairwise_accuracy(reward_fn: RewardFn, pairs: Sequence[PreferencePair]) -> PairwiseReport:
    """Score each distinct ``(prompt, completion)`` of ``pairs`` once, with any reward model, and compare."""
    if not pairs:
        raise ValueError("pairwise_accuracy needs at least one pair.")
    gaps = _score_gaps(reward_fn, pairs)
    return PairwiseReport(_accuracy(gaps), float(gaps.mean()), len(pairs), len({p.prompt for p in pairs}))


def _score_gaps(reward_fn: RewardFn, pairs: Sequence[PreferencePair]) -> np.ndarray:
    """``r(chosen) - r(rejected)`` of each pair, each distinct ``(prompt, completion)`` scored once."""
    prompts, completions, index = distinct_items(pairs)
    scores = np.asarray(reward_fn(prompts, completions), dtype=np.float64)
    return np.array([scores[index[(p.prompt, p.chosen)]] - scores[index[(p.prompt, p.rejected)]] for p in pairs])


def _accuracy(gaps: np.ndarray) -> float:
    """Share of positive gaps, a zero gap (a tie) counting one half."""
    return float(np.mean((gaps > 0) + 0.5 * (gaps == 0)))


def pair_items(pairs: Sequence[PreferencePair]) -> list[tuple[str, str]]:
    """The ``(prompt, completion)`` of every chosen and rejected side, in order."""
    return [item for p in pairs for item in ((p.prompt, p.chosen), (p.prompt, p.rejected))]


def distinct_items(pairs: Sequence[PreferencePair]) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """Prompts and completions of the distinct ``(prompt, completion)`` of ``pairs`` (each scored once), and
    each one's position in them."""
    items = list(dict.fromkeys(pair_items(pairs)))
    return [p for p, _ in items], [c for _, c in items], {item: i for i, item in enumerate(items)}


def train_reward_model(
    data: str | os.PathLike | Sequence[PreferencePair],
    config: TrainConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    embedding_cache: dict[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train a reward model on preference pairs; optionally save it and a ``training_report.json``.

    Args:
        data: a JSONL file of pairs or rankings (see [reward_models.preferences][reward_models.preferences]), or the
            pairs.
        config: the settings; default [TrainConfig()][reward_models.training.TrainConfig].
        out_dir: where to save the model (reload with ``make_reward_model(out_dir)``), or ``None``.
        embedding_cache: ``minilm`` only: a dict ``text -> embedding`` that this call reads and fills, so that
            several heads trained on the same texts (an ensemble, a sweep) embed each text once; the encoder is
            frozen, so every head would compute the same embeddings.
    """
    import torch
    from tqdm.auto import tqdm

    from reward_models.learned import EncoderHeadReward

    start = time.perf_counter()  # training time includes loading the model and embedding the texts
    config = config or TrainConfig()
    dist.init_distributed()  # joins the launcher's process group; nothing without one
    dist.check_same_on_all_ranks("reward-model configuration", {**asdict(config), "device": None, "progress": None})
    pairs = load_preferences(data) if isinstance(data, (str, os.PathLike)) else list(data)
    train, held_out = split_by_prompt(pairs, config.eval_fraction, config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    with dist.main_process_first():  # rank 0 builds a cached model before the others look for it
        model = _new_model(config)
    if isinstance(model, EncoderHeadReward):
        if embedding_cache is not None:
            model.share_cache(embedding_cache)  # filled by cache_embeddings below, and left filled for the next call
        model.cache_embeddings([text for item in pair_items(pairs) for text in item])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None  # the history entry of the best held-out epoch so far
    best_weights: list[torch.Tensor] | None = None  # its trainable weights, unless the model holds them
    show = config.progress and dist.is_main()
    bar = tqdm(total=config.epochs * len(train), disable=not show, desc="reward model", unit="pair")
    for epoch in range(1, config.epochs + 1):
        model.model.train()
        losses = []
        for batch in _batches(train, config.batch_size, rng):
            optimizer.zero_grad()
            loss = _step(model, batch, config.margin)
            optimizer.step()
            losses.append(loss.item())
            bar.update(len(batch))
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        model.model.eval()
        entry = {"epoch": epoch, "loss": float(np.mean(losses))}
        if held_out:
            # Rank 0's figures on every rank: all score the same pairs with the same weights, but a last-bit
            # difference between devices must not make the processes keep or stop at different epochs.
            entry |= dist.broadcast_object(_held_out_metrics(model, held_out, config.margin))
            bar.set_postfix(epoch=epoch, loss=f"{entry['loss']:.3f}", eval_acc=f"{entry['eval_accuracy']:.3f}")
        history.append(entry)
        if held_out and (best is None or _better(entry, best)):
            best = entry
            if config.keeps_best_epoch and epoch < config.epochs:  # after the last epoch the model holds them
                best_weights = [p.detach().to("cpu", copy=True) for p in model.trainable_parameters()]
        if config.keeps_best_epoch and config.patience is not None and epoch - best["epoch"] >= config.patience:
            break  # keeps_best_epoch implies a held-out split, so there is a best epoch
    bar.close()
    best_epoch = best["epoch"] if best is not None else None
    kept_epoch = history[-1]["epoch"]
    if config.keeps_best_epoch and best_epoch != kept_epoch:
        with torch.no_grad():  # back to the best epoch's weights (the optimiser changed nothing else)
            for param, saved in zip(list(model.trainable_parameters()), best_weights, strict=True):
                param.copy_(saved)
        kept_epoch = best_epoch

    train_prompts, train_completions, _ = distinct_items(train)  # normalised on the kept weights
    model.normalization = Normalization.of(model.raw_scores(train_prompts, train_completions))
    report = {
        "config": asdict(config),
        "train": asdict(pairwise_accuracy(model, train)),
        "eval": asdict(pairwise_accuracy(model, held_out)) if held_out else None,
        "normalization": model.normalization.to_dict(),
        "history": history,
        "best_epoch": best_epoch,
        "kept_epoch": kept_epoch,
        "seconds": time.perf_counter() - start,
    }
    if isinstance(model, EncoderHeadReward):
        model.share_cache({})  # the model keeps no embeddings (a shared cache stays filled, with its owner)
    if out_dir is not None and dist.is_main():
        model.save(out_dir)
        (Path(out_dir) / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return TrainResult(model, report)


def _held_out_metrics(
    model: EncoderHeadReward | HFClassifierReward, held_out: Sequence[PreferencePair], margin: float
) -> dict[str, float]:
    """Pairwise accuracy and Bradley–Terry loss of the raw scores on the held-out pairs, from one scoring pass."""
    gaps = _score_gaps(model.raw_scores, held_out)
    margins = np.array([p.margin + margin for p in held_out])
    return {"eval_accuracy": _accuracy(gaps), "eval_loss": float(np.mean(np.logaddexp(0.0, margins - gaps)))}


def _better(entry: dict[str, Any], best: dict[str, Any]) -> bool:
    """Whether an epoch beats the best so far: higher held-out accuracy, or equal with a lower held-out loss (an
    exact tie keeps the earlier epoch)."""
    if entry["eval_accuracy"] != best["eval_accuracy"]:
        return entry["eval_accuracy"] > best["eval_accuracy"]
    return entry["eval_loss"] < best["eval_loss"]


def _new_model(config: TrainConfig) -> EncoderHeadReward | HFClassifierReward:
    from reward_models.hf_classifier import HFClassifierReward
    from reward_models.learned import EncoderHeadReward

    if config.backbone == "minilm":
        return EncoderHeadReward.new(
            config.model, config.use_prompt, config.hidden_size, config.dropout, config.max_length, device=config.device
        )
    return HFClassifierReward.from_backbone(
        config.model, config.input_format, config.max_length, config.batch_size, config.device
    )


def _batches(pairs: Sequence[PreferencePair], batch_size: int, rng: random.Random) -> list[list[PreferencePair]]:
    """Shuffled batches of whole prompts: a prompt's pairs stay together, cut only if more than ``batch_size``."""
    by_prompt: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        by_prompt[pair.prompt].append(pair)
    groups = [group[i : i + batch_size] for group in by_prompt.values() for i in range(0, len(group), batch_size)]
    rng.shuffle(groups)
    batches, current = [], []
    for group in groups:
        if current and len(current) + len(group) > batch_size:
            batches.append(current)
            current = []
        current = current + group
    return [*batches, current] if current else batches


def _step(
    model: EncoderHeadReward | HFClassifierReward, batch: Sequence[PreferencePair], margin: float
) -> torch.Tensor:
    """This process's share of one batch's loss and gradients, the gradients then summed over the processes;
    returns the batch's loss. Its pairs are those of every ``world_size``-th prompt of the batch (a prompt's
    completions are scored on one process, once)."""
    import torch

    prompts = list(dict.fromkeys(p.prompt for p in batch))
    mine = set(prompts[dist.rank() :: dist.world_size()])
    local = [p for p in batch if p.prompt in mine]
    share = _bradley_terry_loss(model, local, margin, normalizer=len(batch)) if local else None
    if share is not None:
        share.backward()  # a process without pairs contributes zero gradients
    dist.all_reduce_gradients(list(model.trainable_parameters()))
    return dist.all_reduce_sum(torch.zeros(()) if share is None else share.detach().cpu())


def _bradley_terry_loss(
    model: EncoderHeadReward | HFClassifierReward,
    batch: Sequence[PreferencePair],
    margin: float,
    normalizer: int | None = None,
) -> torch.Tensor:
    """``mean(-log σ(r_w - r_l - m))`` over the batch, each distinct completion scored once; with
    ``normalizer``, the sum divided by it (a process's share of a larger batch)."""
    import torch
    import torch.nn.functional as F

    prompts, completions, index = distinct_items(batch)
    scores = model.forward(prompts, completions)  # (U,) U distinct completions
    winners = torch.tensor([index[(p.prompt, p.chosen)] for p in batch], device=scores.device)
    losers = torch.tensor([index[(p.prompt, p.rejected)] for p in batch], device=scores.device)
    margins = torch.tensor([p.margin + margin for p in batch], device=scores.device, dtype=scores.dtype)
    losses = -F.logsigmoid(scores[winners] - scores[losers] - margins)  # (B,)
    return losses.mean() if normalizer is None else losses.sum() / normalizer
