"""The settings every LM agent shares ([AgentConfig][agents.config.AgentConfig]), and the checks of what an agent is
given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gymnasium.vector import VectorEnv

from agents.losses import KL_ESTIMATORS

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "linear", "cosine")
ROLLOUT_BACKENDS = ("engine", "vllm")


@dataclass
class AgentConfig:
    """Settings every LM agent shares. Algorithms extend it with their own."""

    learning_rate: float = 1e-5
    """AdamW step size (the peak, with a schedule)."""
    lr_schedule: str = "constant"
    """``"constant"``, ``"linear"`` or ``"cosine"`` (decay to 0 at the end of ``learn``'s ``total_episodes``, or of
    its ``schedule_episodes`` when training is sliced into several calls), after the warm-up."""
    warmup_steps: int = 0
    """Optimizer steps over which the learning rate rises linearly from 0 to ``learning_rate``."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay. 0, as the RLHF references use: decay pulls the weights toward zero, not
    toward the reference."""
    batch_size: int = 16
    """Finished episodes per iteration (one rollout, then the update), over all processes of a distributed run;
    each process's share (``batch_size / world_size``) is a multiple of its env's ``num_envs``."""
    minibatch_size: int = 8
    """Episodes per gradient step (over all processes); each process makes one forward pass over its part, or
    several with ``microbatch_size``."""
    microbatch_size: int | None = None
    """Episodes per forward and backward pass of the update (on each process): a minibatch's passes add up their
    gradients before its one step, which is the step of one pass over the whole minibatch (to float rounding),
    with the activations of ``microbatch_size`` episodes in memory at a time, not ``minibatch_size``'s. ``None``:
    the minibatch in one pass. Splitting a batch's only minibatch costs a pass without gradients for π_old."""
    eval_batch_size: int | None = None
    """Episodes per chunk of the passes without gradients (old log-probs and values, reference); ``None``:
    ``minibatch_size``. It bounds their memory: one chunk's full-vocabulary logits exist at a time."""
    epochs: int = 1
    """Passes over each batch."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global L2 norm)."""
    clip_range: float = 0.2
    """Clipping of the probability ratio ``π/π_old`` to ``[1 − clip_range, 1 + clip_range]``."""
    kl_coef: float = 0.05
    """β, the weight of the KL divergence to the frozen reference model."""
    kl_estimator: str = "k1"
    """Per-token estimator of KL(π‖π_ref) (Schulman 2020): ``"k1"`` = ``log π − log π_ref``, ``"k2"`` = half
    its square, ``"k3"`` = ``r − 1 − log r`` with ``r = π_ref/π`` (never negative). ``train/kl_ref`` logs k1."""
    ent_coef: float = 0.0
    """Weight of the entropy bonus."""
    target_kl: float | None = None
    """Stop an iteration's epochs early once a minibatch's approximate KL to π_old exceeds 1.5× this."""
    temperature: float = 1.0
    """Sampling temperature; log-probs in the loss use the same temperature, so ratios stay consistent."""
    precision: str = "auto"
    """``"fp32"``, or ``"bf16"``: the passes and the update under bfloat16 autocast, the weights and optimizer staying
    float32, and sampling by a bfloat16 copy of the weights (see
    [LMAgent.collect_prompts][agents.base.LMAgent.collect_prompts]); ``"auto"``: bf16 on a GPU that supports it, else
    fp32. On a CPU without native bfloat16 (AMX or AVX512-BF16) ``"bf16"`` would be slower than fp32, so it falls back
    to fp32 with a warning."""
    rollout_backend: str = "engine"
    """What samples the rollouts: ``"engine"``, textgym's rollout engine, stepping the env a token at a time with the
    policy (under bf16, its bfloat16 copy); ``"vllm"``, a vLLM engine in this process writing whole turns
    ([VLLMCollector][agents.vllm_rollout.VLLMCollector]), the weights pushed to it before every rollout (after every
    update). vLLM needs the ``vllm`` extra, one process, and neither LoRA nor FSDP."""
    vllm_dtype: str = "bfloat16"
    """The dtype vLLM samples in (``rollout_backend="vllm"``): ``"bfloat16"``, or ``"float32"``."""
    vllm_gpu_memory_utilization: float = 0.3
    """The share of the GPU's memory vLLM takes for its weights and KV cache; the trainer keeps the rest."""
    tis_cap: float | None = 2.0
    """Correct the sampler's drift by truncated importance sampling (Yao et al. 2025, whose cap is 2): each token's
    policy-gradient term is weighted by ``min(π_old / π_sampler, tis_cap)``, π_old being the trainer's log-prob of the
    token and π_sampler the one it was sampled with (the bfloat16 sampling copy, or vLLM). When the trainer samples
    itself in float32 the ratio is 1 to about 1e-5 and nothing changes. ``None``: no weighting; the drift's
    statistics (``train/sampler_logprob_error``, ``train/tis_ratio_mean``, ...) are logged either way."""
    missing_eos_penalty: float | None = None
    """Subtract this from the last reward of every completion that was truncated, not ended by a stop token."""
    mask_truncated_completions: bool = False
    """Leave truncated completions out of the loss (the score of a text cut off says little about it)."""
    normalize_rewards: bool = False
    """Divide rewards by the running standard deviation of episode returns (its statistics are checkpointed)."""
    reward_clip: float | None = None
    """Clip each (normalised) per-token reward to ``[−reward_clip, reward_clip]``."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank (``peft``) instead of all weights; 0 trains everything."""
    fsdp: bool = False
    """Shard the policy and its reference over the processes of a distributed run with FSDP2
    (``torch.distributed.fsdp.fully_shard``): each process keeps ``1/world_size`` of the weights, gradients and
    optimizer state, gathering one transformer block at a time in the passes and the whole policy once per
    rollout for sampling (docs/distributed.md). Not with ``lora_rank`` or ``separate_critic``."""
    keep_host_memory: bool = True
    """On a CPU, under Linux with glibc: keep the memory the process frees for reuse instead of returning it to the OS
    ([keep_freed_host_memory][agents.precision.keep_freed_host_memory]). An update frees and allocates hundreds of MB
    each time (gradients, full-vocabulary log-probs); memory returned is faulted in and zeroed again, page by page, at
    the next one. The process's resident memory then stays at its peak. ``False``: glibc's defaults."""
    seed: int = 0
    """Seeds weight init of new heads, sampling, prompt order and minibatch order."""
    device: str | None = None
    """Policy device; default ``cuda`` when available, else ``cpu``."""
    reference_device: str | None = None
    """Device of the frozen reference model; default: the policy's. Not with LoRA, whose reference is the
    policy's own weights with the adapters off."""
    checkpoint_every: int = 10
    """Iterations between checkpoints (a final one is always written) when the agent has a ``run_dir``."""
    tensorboard: bool = True
    """Write TensorBoard event files next to ``progress.csv``."""
    samples_per_log: int = 4
    """Completions written to ``samples.jsonl`` each iteration."""

    def __post_init__(self) -> None:
        for name in ("learning_rate", "batch_size", "minibatch_size", "epochs", "temperature", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) exceeds batch_size ({self.batch_size}).")
        if self.eval_batch_size is not None and self.eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be positive (or None), got {self.eval_batch_size}.")
        if self.microbatch_size is not None and not 0 < self.microbatch_size <= self.minibatch_size:
            raise ValueError(
                f"microbatch_size must be positive and at most minibatch_size ({self.minibatch_size}) (or None), "
                f"got {self.microbatch_size}."
            )
        if self.kl_coef < 0 or self.ent_coef < 0 or self.clip_range <= 0 or self.weight_decay < 0:
            raise ValueError("kl_coef, ent_coef and weight_decay must be >= 0 and clip_range > 0.")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.tis_cap is not None and self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be positive (or None), got {self.tis_cap}.")
        if self.reward_clip is not None and self.reward_clip <= 0:
            raise ValueError(f"reward_clip must be positive (or None), got {self.reward_clip}.")
        for name, valid in (
            ("kl_estimator", KL_ESTIMATORS),
            ("precision", PRECISIONS),
            ("lr_schedule", LR_SCHEDULES),
            ("rollout_backend", ROLLOUT_BACKENDS),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}.")
        if self.rollout_backend == "vllm" and (self.lora_rank > 0 or self.fsdp):
            raise ValueError(
                "rollout_backend='vllm' loads the whole policy's weights into vLLM after every update; it does not "
                "support lora_rank > 0 or fsdp=True yet. Use rollout_backend='engine' for those."
            )
        if self.fsdp and (self.lora_rank > 0 or getattr(self, "separate_critic", False)):
            raise ValueError(
                "fsdp=True shards the whole policy and reference; it does not support lora_rank > 0 (LoRA's "
                "weights are small: replicate them, fsdp=False) or separate_critic=True. Drop one of the settings."
            )
        if self.lora_rank > 0 and self.reference_device is not None:
            raise ValueError(
                "reference_device has no effect with lora_rank > 0: the reference is the policy's own weights with "
                "the adapters switched off, on the policy's device. Drop one of the two settings."
            )


def check_env(envs: VectorEnv, config: AgentConfig, agent: str, world_size: int = 1) -> None:
    """Refuse envs the LM agents cannot train on correctly, saying what to change."""
    if not hasattr(envs, "num_envs") or not hasattr(envs, "tokenizer") or not hasattr(envs, "prompts"):
        raise TypeError(
            f"{agent} needs a textgym vector env (gym.make_vec('TextGen-v0', num_envs=N)); got {type(envs).__name__}."
        )
    if world_size > 1 and (config.batch_size % world_size or config.batch_size // world_size % envs.num_envs):
        raise ValueError(
            f"batch_size={config.batch_size} does not split into {world_size} processes' shares that are "
            f"multiples of each process's num_envs={envs.num_envs}: make batch_size a multiple of "
            f"{world_size * envs.num_envs} (world size x num_envs), or change the number of processes."
        )
    if config.batch_size % envs.num_envs:
        raise ValueError(
            f"batch_size={config.batch_size} is not a multiple of the env's num_envs={envs.num_envs}: every rollout "
            "fills whole waves of sub-envs. Change one of them."
        )
    episodes = getattr(envs, "episodes", None)
    if getattr(episodes, "kl_coef", 0.0) and config.kl_coef:
        raise ValueError(
            f"The env adds a KL reward (kl_coef={episodes.kl_coef}) and {agent} a KL penalty "
            f"(kl_coef={config.kl_coef}): the policy would be penalised twice. Make the env without kl_coef (the "
            f"agent's penalty is the usual one), or pass kl_coef=0 to {agent}."
        )
    reference = getattr(episodes, "reference", None)
    if getattr(reference, "action_mask", None) is not None:
        raise ValueError(
            f"The env restricts actions with action_mask={reference.action_mask!r}, but {agent} samples from the "
            "policy's whole distribution, so its actions would be refused. Make the env without action_mask; "
            "to sample from the most likely tokens only, use the rollout engine's SamplingConfig(top_k=..., "
            "top_p=...), or train with sb3-contrib's MaskablePPO (agents.sb3)."
        )


def check_same_tokenizer(policy_tokenizer: Any, env_tokenizer: Any, model_name: str) -> None:
    """Refuse a policy whose tokens are not the env's actions."""
    if policy_tokenizer.get_vocab() != env_tokenizer.get_vocab():
        raise ValueError(
            f"The policy's tokenizer ({model_name}) is not the env's: its actions would be other tokens. "
            f"Make the env with the same model: gym.make_vec(..., model={model_name!r})."
        )
