"""Proxy and gold rewards of the over-optimisation task (Gao et al. 2022; Coste et al. 2023).

* ``"fluent-positivity"`` ([FluentPositivity][reward_models.proxy.FluentPositivity]), the gold: positivity
  ``(1 + VADER compound) / 2`` times fluency ([reward_models.fluency.Fluency][reward_models.fluency.Fluency]) times
  guards against keyword lists, repetition and copying the prompt, in ``[0, 1]``. A fluent, positive text scores near
  1; word salad, ``"great great great"`` and ``"happy, wonderful, amazing"`` near 0, however positive their words.
* ``"proxy-positivity"`` ([proxy_positivity][reward_models.proxy.proxy_positivity]), the proxy: MiniLM heads
  ([reward_models.learned][reward_models.learned]) trained on 250, 1000 or 4000 preference pairs labelled by the gold,
  with 0% or 25% of the labels flipped, shipped under ``reward_models/data/proxy/`` and rebuilt by
  ``reward_models/data/build_proxy_heads.py`` (see ``reward_models/data/README.md``). Each setting has an ensemble of
  heads that differ only by their training seed (initialisation, batch order, dropout), as in Coste et al.;
  ``proxy="single"`` scores with the seed-0 head, ``"mean"`` with the mean of the heads' standardised scores,
  ``"worst"`` with their minimum (the conservative ensemble that resists over-optimisation best in Coste et al.).

    proxy = make_reward_model("proxy-positivity", pairs=1000, label_noise=0.25, proxy="worst")
    gold = make_reward_model("fluent-positivity")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reward_models.base import BatchedRewardModel

if TYPE_CHECKING:
    from reward_models.learned import EncoderHeadReward

PROXY_DIR = Path(__file__).parent / "data" / "proxy"
"""Where the shipped proxy heads live, one directory each ([head_dir][reward_models.proxy.head_dir])."""
PAIR_COUNTS = (250, 1000, 4000)
"""The shipped heads' training-set sizes, in preference pairs labelled by the gold."""
LABEL_NOISES = (0.0, 0.25)
"""The shipped heads' shares of flipped training labels."""
ENSEMBLE_SEEDS = (0, 1, 2)
"""The training seeds of each setting's heads: the ensemble; the seed-0 head is the single proxy."""
COMBINE = ("single", "mean", "worst")
BUILD_COMMAND = "OMP_NUM_THREADS=2 python reward_models/data/build_proxy_heads.py"


def head_dir(pairs: int, label_noise: float, seed: int) -> Path:
    """The directory of one shipped head, e.g. ``reward_models/data/proxy/pairs1000-noise25-seed0``."""
    return PROXY_DIR / f"pairs{pairs}-noise{round(100 * label_noise)}-seed{seed}"


def _ramp(values: np.ndarray, zero: float, one: float) -> np.ndarray:
    """``values`` mapped linearly from ``zero`` (0) to ``one`` (1), clipped to [0, 1]; ``one < zero`` ramps down."""
    return np.clip((values - zero) / (one - zero), 0.0, 1.0)


class FluentPositivity:
    """The registered gold ``"fluent-positivity"``: ``(1 + VADER compound) / 2 × fluency × guards``, in ``[0, 1]``.

    The guards (on by default since 2026-12-07) make the known hacks score low however likely the judging LM finds
    them, because a gold that a policy can game never shows over-optimisation: a list of positive keywords (too few
    function words), repetition (too few distinct word bigrams) and copying the prompt (too many of its bigrams).
    Their bands leave the embedded model's own continuations of the shipped openings alone (2% of them lose
    anything, 0.66% of the preferences among them flip; `benchmarks/gold_probes.py` prints each hack's score).

    Args:
        fluency_kwargs: arguments of [reward_models.fluency.Fluency][reward_models.fluency.Fluency] (default: the
            embedded SmolLM2 judges, mapping mean log-probabilities from −6 to −3.5 nats onto 0 to 1).
        guards: ``False`` scores without the guards, as the gold did before 2026-12-07 (the shipped proxy heads
            were trained on its labels).
        min_function_share: the share of function words from which a text counts as sentences (0 words: 0).
        distinct_band: the distinct-bigram shares that map to 0 and to 1.
        overlap_band: the shares of word bigrams taken from the prompt that map to 1 and to 0.
    """

    __name__ = "fluent-positivity"

    def __init__(
        self,
        fluency_kwargs: dict[str, Any] | None = None,
        guards: bool = True,
        min_function_share: float = 0.25,
        distinct_band: tuple[float, float] = (0.5, 0.85),
        overlap_band: tuple[float, float] = (0.2, 0.5),
    ) -> None:
        from reward_models.fluency import Fluency
        from reward_models.lexicon import VaderPositivity

        for name, (low, high) in (("distinct_band", distinct_band), ("overlap_band", overlap_band)):
            if not 0 <= low < high <= 1:
                raise ValueError(f"{name} must be two shares with 0 <= low < high <= 1, got {(low, high)}.")
        if not 0 < min_function_share <= 1:
            raise ValueError(f"min_function_share must be in (0, 1], got {min_function_share}.")
        self.positivity = VaderPositivity()
        self.fluency = Fluency(**(fluency_kwargs or {}))
        self.guards = guards
        self.min_function_share, self.distinct_band, self.overlap_band = min_function_share, distinct_band, overlap_band

    def guard(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """The product of the three guards of each completion, in [0, 1]: 1 for ordinary sentences."""
        from reward_models.fluency import distinct_n, function_word_share, prompt_overlap

        structure = np.array([function_word_share(c) for c in completions]) / self.min_function_share
        repetition = _ramp(np.array([distinct_n(c) for c in completions]), *self.distinct_band)
        overlap = np.array([prompt_overlap(p, c) for p, c in zip(prompts, completions)])
        copying = _ramp(overlap, *self.overlap_band[::-1])
        return np.clip(structure, 0.0, 1.0) * repetition * copying

    def __call__(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        positivity = (1 + self.positivity(prompts, completions)) / 2
        scores = positivity * np.asarray(self.fluency(prompts, completions), dtype=np.float64)
        return scores * self.guard(prompts, completions) if self.guards else scores


class ProxyEnsemble(BatchedRewardModel):
    """Heads on one frozen encoder, combined: each head's standardised score, then their mean or minimum.

    The texts are embedded once for all heads (they share the encoder, see
    [reward_models.learned.shared_encoder][reward_models.learned.shared_encoder]).

    Args:
        members: the heads ([EncoderHeadReward][reward_models.learned.EncoderHeadReward]), all on the same encoder.
        combine: ``"mean"`` or ``"worst"`` (the minimum over heads); one head is scored as it is.
        batch_size: pairs scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(
        self,
        members: Sequence[EncoderHeadReward],
        combine: str = "mean",
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        if combine not in ("mean", "worst"):
            raise ValueError(f"combine must be 'mean' or 'worst', got {combine!r}.")
        if not members:
            raise ValueError("A ProxyEnsemble needs at least one head.")
        if len({(m.encoder_ref, m.use_prompt, m.max_length) for m in members}) > 1:
            raise ValueError("The heads of a ProxyEnsemble must share one encoder, max_length and use_prompt.")
        super().__init__(batch_size, device, name=f"proxy-{combine}")
        self.members = list(members)
        self.combine = combine

    def member_scores(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        """Each head's standardised scores, shape ``(heads, B)``."""
        import torch

        first = self.members[0]
        with torch.inference_mode():
            features = first.encoder(completions, self.batch_size).to(first.device)  # (B, D)
            if first.use_prompt:
                features = torch.cat([features, first.encoder(prompts, self.batch_size).to(first.device)], -1)
            rows = []
            for member in self.members:
                raw = member.head(features).cpu().numpy().astype(np.float64)  # (B,)
                rows.append(member.normalization(raw) if member.normalization else raw)
        return np.stack(rows)

    def score_batch(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        scores = self.member_scores(prompts, completions)  # (heads, B)
        return scores.mean(0) if self.combine == "mean" else scores.min(0)


def proxy_positivity(
    pairs: int = 1000,
    label_noise: float = 0.0,
    proxy: str = "single",
    batch_size: int = 64,
    device: str | None = None,
) -> EncoderHeadReward | ProxyEnsemble:
    """The registered proxy ``"proxy-positivity"``: shipped heads trained on gold-labelled pairs.

    Args:
        pairs: training pairs of the heads, one of [PAIR_COUNTS][reward_models.proxy.PAIR_COUNTS].
        label_noise: the share of flipped labels, one of [LABEL_NOISES][reward_models.proxy.LABEL_NOISES].
        proxy: ``"single"`` (the seed-0 head), ``"mean"`` or ``"worst"`` (the ensemble of the
            [ENSEMBLE_SEEDS][reward_models.proxy.ENSEMBLE_SEEDS] heads: the mean or the minimum of their standardised
            scores).
        batch_size: pairs scored per forward pass.
        device: a torch device string; ``None`` takes ``"cuda"`` when available, else ``"cpu"``.

    Raises:
        ValueError: a setting that is not shipped (the message lists the valid ones).
        FileNotFoundError: a head is missing (the message gives the command that builds them).
    """
    from reward_models.learned import EncoderHeadReward

    if pairs not in PAIR_COUNTS:
        raise ValueError(f"pairs must be one of {PAIR_COUNTS} (the shipped proxy heads), got {pairs!r}.")
    if label_noise not in LABEL_NOISES:
        raise ValueError(f"label_noise must be one of {LABEL_NOISES} (the shipped proxy heads), got {label_noise!r}.")
    if proxy not in COMBINE:
        raise ValueError(f"proxy must be one of {COMBINE}, got {proxy!r}.")
    seeds = ENSEMBLE_SEEDS[:1] if proxy == "single" else ENSEMBLE_SEEDS
    dirs = [head_dir(pairs, label_noise, seed) for seed in seeds]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"Proxy head(s) {missing} are not built; build them with `{BUILD_COMMAND}`.")
    heads = [EncoderHeadReward.load(d, batch_size=batch_size, device=device) for d in dirs]
    return heads[0] if proxy == "single" else ProxyEnsemble(heads, proxy, batch_size, device)
