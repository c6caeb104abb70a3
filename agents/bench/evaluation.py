"""Evaluation on a task's test split: sample completions with a policy, then measure them.

Every algorithm is evaluated the same way: it hands over a :class:`~agents.rollout.RolloutBatch` of test
episodes (sampled by the rollout engine with its current weights, or scripted), whose ``logprobs`` are the
log-probs of its completions under the policy that produced them; :func:`completion_metrics` then scores
them against the frozen starting model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from math import gcd
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from agents.policy import completion_logprobs
from agents.rollout import RolloutBatch, RolloutCollector
from agents.sampling import SamplingConfig
from textgym.tasks import TaskSpec


class MaskedRolloutCollector(RolloutCollector):
    """The rollout engine sampling only among the env's allowed actions (``envs.action_masks()``), as
    ``MaskablePPO`` does; the recorded log-probs are those of the masked (renormalised) distribution."""

    def _sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        allowed = torch.as_tensor(self.envs.action_masks(), device=logits.device)  # (N, V)
        return super()._sample(logits.masked_fill(~allowed, float("-inf")))


class TestSet:
    """A task's test split at one level, and the fixed prompts every algorithm and evaluation point is scored on.

    Args:
        env_id: the task env's id; the test set is ``gym.make_vec(env_id, split="test", level=level, model=model,
            **env_kwargs)``.
        level: the task's level.
        model: the starting model, which samples the completions and is the reference of KL and perplexity.
        episodes: test prompts per evaluation (drawn once from the test split with a fixed seed).
        seed: seeds the test env and the sampling of completions.
        device: where the reference (starting) model runs.
        env_kwargs: more arguments of every test env, those of the training env's judges
            ([Cell.env_kwargs][agents.bench.algorithms.Cell.env_kwargs]): test and training share their judges.
    """

    def __init__(
        self,
        env_id: str,
        level: int,
        model: str,
        episodes: int,
        seed: int,
        device: str,
        env_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        from textgym.lm.models import load_causal_lm

        self.env_id, self.level, self.model, self.seed = env_id, level, model, seed
        self.env_kwargs = dict(env_kwargs or {})
        # collect_prompts runs whole waves of sub-envs; a wide wave decodes many tokens for the price of few steps
        self.num_envs = gcd(episodes, 32)
        self._envs: dict[tuple, Any] = {}
        pool = list(self.envs().prompts)
        rng = np.random.default_rng(0)  # the same prompts for every seed and algorithm: paired comparisons
        self.prompts = [pool[i] for i in rng.choice(len(pool), size=episodes, replace=len(pool) < episodes)]
        self.reference = load_causal_lm(model, device=device)

    def envs(self, **env_kwargs: Any) -> Any:
        """The test vector env (one per distinct ``env_kwargs``, e.g. with a reference model for masks)."""
        import gymnasium as gym

        key = tuple(sorted(env_kwargs.items()))
        if key not in self._envs:
            self._envs[key] = gym.make_vec(
                self.env_id,
                num_envs=self.num_envs,
                split="test",
                level=self.level,
                model=self.model,
                **self.env_kwargs,
                **env_kwargs,
            )
        return self._envs[key]

    def sample(self, policy: PreTrainedModel, repeat: int = 1, masked: bool = False, **env_kwargs: Any) -> RolloutBatch:
        """Each test prompt ``repeat`` times (consecutively), completed by ``policy`` at temperature 1."""
        collector_class = MaskedRolloutCollector if masked else RolloutCollector
        collector = collector_class(policy, self.envs(**env_kwargs), SamplingConfig(), seed=self.seed)
        return collector.collect_prompts([p for p in self.prompts for _ in range(repeat)])

    def close(self) -> None:
        for envs in self._envs.values():
            envs.close()


def scripted_episodes(test: TestSet, task: TaskSpec) -> RolloutBatch:
    """Play the task's scripted solver on every test prompt: its completion token by token, then a stop token;
    in a multi-turn task, each of its turns then the end-of-turn token, the env replying in between.

    The policy is deterministic, so every action's log-prob is 0 and the KL to the reference is
    ``−log π_ref(completion)`` (over the solver's own tokens).
    """
    import gymnasium as gym

    env = gym.make(test.env_id, split="test", level=test.level, model=test.model, **test.env_kwargs)
    core, tokenizer = env.unwrapped.episodes, env.unwrapped.tokenizer
    stop = core.end_of_turn if task.multi_turn else tokenizer.eos_token_id
    width = core.max_prompt_tokens
    prompt_ids, completion_ids, agent_masks, infos = [], [], [], []
    for prompt in test.prompts:
        obs, _ = env.reset(seed=test.seed, options={"prompt": prompt})
        done = False
        while not done:
            turn = task.solver(core.transcript(0) if task.multi_turn else prompt, test.level)
            for action in [*tokenizer.encode(turn, add_special_tokens=False), stop]:
                obs, _, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if done:
                    break
        real = obs["attention_mask"] == 1
        prompt_ids.append(obs["input_ids"][:width][real[:width]])
        completion_ids.append(obs["input_ids"][width:][real[width:]])
        agent_masks.append(obs.get("agent_mask", real.astype(np.int64))[width:][real[width:]])
        infos.append(info)
    env.close()
    return _pack(prompt_ids, completion_ids, agent_masks, infos, tokenizer.pad_token_id or 0, test.reference.device)


def completion_metrics(batch: RolloutBatch, reference: PreTrainedModel, kl: float | None = None) -> dict[str, float]:
    """What the benchmark reports about a batch of test episodes.

    Args:
        batch: finished test episodes; ``logprobs`` under the policy that sampled them.
        reference: the frozen starting model.
        kl: the KL to report instead of the sampled estimate (best-of-n's, computed from its pool of samples).

    Returns:
        ``reward`` (mean training-reward score), ``gold_score`` (mean), ``kl`` (nats per completion: the mean of
        ``Σ_t log π(a_t) − log π_ref(a_t)``, an unbiased estimate of KL(π ‖ π_ref) over whole completions),
        ``ref_perplexity`` (the starting model's per-token perplexity of the completions), ``distinct_1`` and
        ``distinct_2`` (distinct word n-grams over all n-grams), ``completion_tokens`` (total).
    """
    missing = [key for key in ("score", "gold_score") if any(key not in info for info in batch.infos)]
    if missing:
        raise KeyError(
            f"The task env's last-step info lacks {missing}: a benchmark task reports the training reward's "
            "'score' and the 'gold_score' in the info of every episode's last step (see textgym.tasks)."
        )
    mask = batch.completion_mask.float()  # (E, T)
    width = batch.completion_ids.shape[1]
    ref = completion_logprobs(reference, batch.input_ids, batch.attention_mask, width).to(mask.device) * mask
    sampled_kl = ((batch.logprobs - ref) * mask).sum(dim=1).mean().item()
    tokens = mask.sum().item()
    return {
        "reward": float(np.mean([info["score"] for info in batch.infos])),
        "gold_score": float(np.mean([info["gold_score"] for info in batch.infos])),
        "kl": sampled_kl if kl is None else kl,
        "ref_perplexity": math.exp(-ref.sum().item() / max(tokens, 1)),
        "distinct_1": distinct_n(batch.completions, 1),
        "distinct_2": distinct_n(batch.completions, 2),
        "completion_tokens": tokens,
    }


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct word n-grams over all word n-grams of ``texts`` (Li et al. 2016); 0 when there are none."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def best_of_n_kl(scores: np.ndarray, n: int) -> float:
    """KL(best-of-n ‖ π_ref) in nats, estimated from a pool of samples per prompt, ties included.

    ``log n − (n − 1)/n`` (Stiennon et al. 2020) holds only when no two samples tie; a coarse reward (most scores
    0, say) ties often, and the best-of-n policy then stays much closer to π_ref. So each prompt's pool of ``m``
    scored samples stands in for π_ref (uniform over the pool), and the KL of best-of-n over that distribution is
    exact: draw ``n`` items with replacement, keep one with the highest score, ties broken uniformly. With the
    pool's distinct scores ``v_1 < … < v_k``, held by ``c_j`` items, and ``F(v_j) = (c_1 + … + c_j) / m``,

        P(the best score is v_j) = F(v_j)^n − F(v_{j−1})^n,  shared equally by the ``c_j`` items at ``v_j``;
        KL = Σ_i p_i log(p_i m) = Σ_j P_j log(P_j m / c_j),

    averaged over prompts. It is 0 when every score ties or ``m = 1``, and tends to ``log n − (n − 1)/n`` for
    distinct scores as ``m`` grows; a pool larger than ``n`` resolves the tail better (it may be ``n`` itself).

    Args:
        scores: ``(prompts, m)`` training-reward scores, one row per prompt's pool.
        n: samples per prompt of the best-of-n policy.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[1] < 1 or n < 1:
        raise ValueError(f"best_of_n_kl: expected (prompts, m >= 1) scores and n >= 1, got {scores.shape} and {n}.")
    m = scores.shape[1]
    kls = []
    for pool in scores:
        _, counts = np.unique(pool, return_counts=True)  # counts per distinct score, lowest first
        cdf = np.cumsum(counts) / m
        best = cdf**n - np.concatenate([[0.0], cdf[:-1]]) ** n  # (k,) P(the best of n has each score)
        kept = best > 0
        kls.append(float(np.sum(best[kept] * np.log(best[kept] * m / counts[kept]))))
    return float(np.mean(kls))


def timed(fn, *args, **kwargs) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and the seconds it took."""
    start = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - start


def _pack(
    prompt_ids: list[np.ndarray],
    completion_ids: list[np.ndarray],
    agent_masks: list[np.ndarray],
    infos: list[dict],
    pad: int,
    device: torch.device,
) -> RolloutBatch:
    """Scripted episodes as a :class:`RolloutBatch`: prompts left-padded, completions (the agent's tokens and, in
    a conversation, the env's between its turns) right-padded, log-probs 0."""
    n, width, length = len(prompt_ids), max(map(len, prompt_ids)), max(map(len, completion_ids))
    prompts = torch.full((n, width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, width), dtype=torch.long)
    completions = torch.full((n, length), pad, dtype=torch.long)
    completion_mask = torch.zeros((n, length), dtype=torch.long)
    env_mask = torch.zeros((n, length), dtype=torch.long)
    for i, (p, c, agent) in enumerate(zip(prompt_ids, completion_ids, agent_masks)):
        prompts[i, width - len(p) :], prompt_mask[i, width - len(p) :] = torch.as_tensor(p), 1
        completions[i, : len(c)], completion_mask[i, : len(c)] = torch.as_tensor(c), torch.as_tensor(agent)
        env_mask[i, : len(c)] = 1 - torch.as_tensor(agent)
    zeros = torch.zeros((n, length))
    return RolloutBatch(
        prompt_ids=prompts.to(device),
        prompt_mask=prompt_mask.to(device),
        completion_ids=completions.to(device),
        completion_mask=completion_mask.to(device),
        logprobs=zeros.to(device),
        rewards=zeros.to(device),
        terminated=torch.ones(n, dtype=torch.bool, device=device),
        env_mask=env_mask.to(device),
        prompts=[info.get("prompt", "") for info in infos],
        completions=[info.get("completion", "") for info in infos],
        infos=infos,
    )
