"""TextGen: continue a prompt one token at a time; a reward model scores the finished completion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from textgym.envs.core import TokenEpisodes
from textgym.lm.prompts import load_prompts
from textgym.tasks import TaskSpec

LEVELS = {1: "openings that are not negative", 2: "all openings", 3: "negative openings"}
"""TextGen-v0's levels: which openings are continued, by their own VADER compound sentiment (< -0.05 is
negative, VADER's own threshold). Turning a negative opening positive is the hard part of the task."""


class TextGenEnv(gym.Env):
    """
    ## Description

    Text generation as a sequential decision problem. An episode is one completion of one prompt: the agent
    writes the completion token by token, and a pluggable reward model scores the finished text. With the
    defaults, the prompts are openings of reviews and stories of mixed sentiment and the reward is the
    positivity of the continuation (VADER), the classic "continue the text positively" RLHF task.

    ## Action Space

    ``Discrete(vocab_size)``: the id of the next token, ``vocab_size`` being the size of the model's output
    layer (``config.vocab_size``).

    ## Observation Space

    A ``Dict`` of two int64 ``Box`` arrays of shape ``(max_prompt_tokens + max_new_tokens,)``:

    | key              | content                                                                   |
    |------------------|---------------------------------------------------------------------------|
    | `input_ids`      | the prompt, left-padded to `max_prompt_tokens`; then the tokens generated so far; padding |
    | `attention_mask` | 1 where `input_ids` holds a real token, 0 on padding                                   |

    The padding token is the tokenizer's pad token (its EOS if it has none).

    With a T5-family encoder–decoder ``model`` (read from its config) the prompt is the encoder's source, and the
    ``Dict`` holds four int64 ``Box`` arrays named as the model's ``forward`` arguments:

    | key                      | shape                   | content                                              |
    |--------------------------|-------------------------|------------------------------------------------------|
    | `input_ids`              | `(max_prompt_tokens,)`  | the prompt, right-padded                             |
    | `attention_mask`         | `(max_prompt_tokens,)`  | 1 on the prompt's tokens                             |
    | `decoder_input_ids`      | `(max_new_tokens + 1,)` | the decoder start token, the tokens so far; padding  |
    | `decoder_attention_mask` | `(max_new_tokens + 1,)` | 1 on the start token and the generated tokens        |

    ## Rewards

    Sparse: 0 on every step but the last; on the last step, the reward model's score of
    ``(prompt, completion)``. The completion is decoded without special tokens and without the stop token.

    With a ``reference_model`` and ``kl_coef``, every step also earns ``kl_coef · log π_ref(a_t | s_t)``, half
    of the KL penalty: the agent adds the other half, ``−kl_coef · log π(a_t | s_t)`` (see
    [textgym.envs.reference][]). Each step's ``info`` then holds ``ref_logprob`` and ``kl_reward``.

    ## Starting State

    A prompt drawn uniformly from the prompt set (its ``split`` and ``level`` part) with the env's
    ``np_random``, or the one passed as ``reset(options={"prompt": "..."})``.

    ## Episode End

    - Termination: the action is a stop token. By default these are the tokenizer's EOS, every
      ``eos_token_id`` of the model's ``generation_config.json`` (e.g. Llama-3's ``<|eot_id|>``) and, with
      ``chat_template=True``, the token that closes the template's assistant turn (ChatML's ``<|im_end|>``,
      Llama-3's ``<|eot_id|>``, Gemma's ``<end_of_turn>``); see [textgym.lm.prompts.stop_token_ids][].
    - Truncation: ``max_new_tokens`` tokens were generated.

    The final step's ``info`` holds ``prompt`` (the text), ``completion`` (the text), ``score`` (the raw
    reward-model score, without the KL part) and ``gold_score`` (the ``gold_model``'s score; the ``score``
    itself without one). Benchmarks report the gold score ([textgym.tasks][], task ``positivity``: 0 is
    the uniform-random policy, 100 a scripted positive reply).

    ## Arguments

    ```python
    env = gym.make("TextGen-v0", model="tiny", split="train", max_new_tokens=16)
    ```

    Every keyword argument of ``gym.make("TextGen-v0", ...)``, with its default. ``TextGenPreference-v0`` is the
    same env registered with ``reward_model="positivity-minilm"``. The task envs take these arguments too, except
    those a task sets itself; a task's own table lists its own arguments and the defaults it changes.

    | argument | type | default | meaning |
    |---|---|---|---|
    | `model` | str, path or None | `None` | the LM (causal or T5) whose tokenizer and vocab set the spaces (below) |
    | `prompts` | str, path, list or None | `None` | the prompt set (below); `None`: the shipped `openings` |
    | `split` | str or None | `None` | `"train"` or `"test"` part of the prompt set (below); `None`: all |
    | `level` | int or None | `None` | `1`, `2`, `3`: non-negative, all, or negative openings; `None`: 2 |
    | `reward_model` | str or callable | `"vader"` | a registered name or a callable (below) |
    | `reward_model_kwargs` | dict or None | `None` | keyword arguments of a registered `reward_model` |
    | `gold_model` | str, callable or None | `None` | scores `info["gold_score"]`; `None`: the reward is the gold |
    | `gold_model_kwargs` | dict or None | `None` | keyword arguments of a registered `gold_model` |
    | `info_models` | dict or None | `None` | `{key: reward model}`: more scores, into the final `info[key]` |
    | `max_prompt_tokens` | int | `64` | prompt width `P`; prompts are left-padded to it |
    | `max_new_tokens` | int | `32` | episode length limit `T`; reaching it truncates the episode |
    | `chat_template` | bool | `False` | wrap each prompt as a user message in the chat template |
    | `stop_token_ids` | list of int or None | `None` | tokens that end an episode; `None`: the model's, `[]`: none |
    | `prompt_truncation` | str | `"error"` | a prompt over `P` tokens: `"error"` raises, `"left"` keeps its end |
    | `reference_model` | str, path or None | `None` | a frozen reference LM for `kl_coef` and `action_mask` |
    | `kl_coef` | float | `0.0` | each step's reward gains `kl_coef · log π_ref(a_t ∣ s_t)` |
    | `action_mask` | str or None | `None` | `"top_k"` or `"top_p"`: allow only the reference's likely tokens |
    | `top_k` | int | `50` | the size of the `"top_k"` mask |
    | `top_p` | float | `0.9` | the probability mass of the `"top_p"` mask |
    | `reference_device` | str or None | `None` | where the reference model runs; `None`: the CPU |
    | `render_mode` | str or None | `None` | `"ansi"` returns, `"human"` prints, the prompt and text so far |

    - ``model``: ``None``, ``"embedded"`` or ``"smollm2-135m-instruct"`` for the embedded SmolLM2-135M-Instruct,
      ``"tiny"`` for a tiny random Llama (tests), or a local Hugging Face model directory: a causal LM or a T5-family
      encoder–decoder (*Observation Space*). The env loads only its tokenizer and config; the policy loads the
      weights. Nothing is downloaded.
    - ``prompts``: a shipped set's name, a ``.txt`` file (one prompt a line), a ``.jsonl`` file (a ``{"prompt":
      ...}`` object or a JSON string a line) or a list of strings. ``openings`` holds review and story openings
      of mixed sentiment.
    - ``split``: two disjoint parts of the prompt set, about 80% / 20%, by a stable hash of each prompt.
      Benchmarks train on ``"train"`` and report ``"test"``.
    - ``level``: the openings whose VADER compound is at least −0.05, all of them, or those below (``LEVELS``).
    - ``reward_model``, ``gold_model``, ``info_models``' values: a registered name
      (``reward_models.registered_names()``) or any callable ``(prompts, completions) -> array of float``. A
      gold model is the true objective when the reward is a proxy; benchmarks report it. An ``info_models`` key
      may not be one of the info's own (``prompt``, ``score``, ``gold_score``, ...).
    - ``stop_token_ids``: the model's stop tokens are listed in *Episode End*.
    - ``prompt_truncation``: with ``"error"`` the whole prompt set is checked when the env is made.
    - ``reference_model``: ``"embedded"``, ``"tiny"`` or a directory, with the env's tokenizer, kept with its
      own KV cache across steps (see ``textgym.envs.reference``); ``kl_coef`` and ``action_mask`` need one.
    - ``action_mask``: ``action_masks()`` allows the reference's ``top_k`` most likely tokens, or its smallest
      set reaching probability ``top_p``, and always the stop tokens (as NLPO does); stepping a disallowed
      action raises ``ValueError``.

    ``gym.make_vec("TextGen-v0", num_envs=N, ...)`` takes the same arguments and ``autoreset_mode``
    (``"next_step"``, Gymnasium's default, ``"same_step"`` or ``"disabled"``): see
    [TextGenVectorEnv][textgym.envs.vector.TextGenVectorEnv].

    ## Version History

    * v0: Initial version (reference model, KL shaping and action masks are opt-in arguments; the defaults
      behave as before). The default stop tokens grew from the tokenizer's EOS alone to the generation
      config's EOS ids and, with ``chat_template=True``, the template's end-of-turn token. ``split``,
      ``level``, ``gold_model`` and ``info["gold_score"]`` were added (the defaults behave as before). An
      encoder–decoder ``model`` gives the encoder–decoder observation (causal models' is unchanged).
    """

    # render_fps only informs tools that replay rendered text; the env itself never sleeps.
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "human"], "render_fps": 4}
    episodes_class: ClassVar[type[TokenEpisodes]] = TokenEpisodes
    """The episode core the single and the vector env run on (a multi-turn task's adds the partner's replies)."""

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        """See *Arguments* above; the arguments but ``render_mode`` become those of
        [TokenEpisodes][textgym.envs.core.TokenEpisodes] (which the vector env shares) through
        [episode_kwargs][textgym.envs.text_gen.TextGenEnv.episode_kwargs]."""
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}."
            )
        self.render_mode = render_mode
        self.episodes = self.episodes_class(1, **self.episode_kwargs(**kwargs))
        self.observation_space = self.episodes.observation_space
        self.action_space = self.episodes.action_space
        self.tokenizer = self.episodes.tokenizer
        self.reward_model = self.episodes.reward_model

    @classmethod
    def episode_kwargs(cls, level: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """The [TokenEpisodes][textgym.envs.core.TokenEpisodes] arguments of this task: the env's arguments with
        ``level`` turned into the prompts it selects. Each task env overrides it; the vector env calls it too."""
        if level is None:
            return kwargs
        if level not in LEVELS:
            raise ValueError(f"TextGen-v0 has levels {list(LEVELS)} ({LEVELS}), got {level!r}.")
        from reward_models import make_reward_model

        prompts = load_prompts(kwargs.get("prompts"))
        sentiment = make_reward_model("vader")([""] * len(prompts), prompts)
        keep = {1: sentiment >= -0.05, 2: np.ones(len(prompts), dtype=bool), 3: sentiment < -0.05}[level]
        if not keep.any():
            raise ValueError(f"No prompt of the set is at level {level} ({LEVELS[level]}).")
        return {**kwargs, "prompts": [p for p, k in zip(prompts, keep) if k]}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "prompt" in options:
            text = options["prompt"]
            ids = self.episodes.encode_prompt(text, where="options['prompt']")
        else:
            index = self.episodes.sample_prompt(self.np_random)
            text, ids = self.episodes.prompts[index], self.episodes.prompt_token_ids[index]
        self.episodes.start(0, ids, text)
        if self.render_mode == "human":
            self.render()
        return self.episodes.observation(0), {"prompt": text}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        actions = self.episodes.check_actions(action, expected=1)
        return self._result(self.episodes.step(np.zeros(1, dtype=np.int64), actions))

    def step_turn(
        self, tokens: Any, strict: bool = False
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Take a whole turn (a sequence of token ids) in one call, exactly as stepping its tokens one at a time
        would: what [textgym.envs.turns.TurnSteps][textgym.envs.turns.TurnSteps] calls (see it for the rules);
        see [TokenEpisodes.step_turns][textgym.envs.core.TokenEpisodes.step_turns] for the info."""
        turn = self.episodes.check_turn(tokens)
        return self._result(self.episodes.step_turns(np.zeros(1, dtype=np.int64), [turn], strict))

    def _result(
        self, step: tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        rewards, terminated, truncated, infos = step
        if self.render_mode == "human":
            self.render()
        return self.episodes.observation(0), float(rewards[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def action_masks(self) -> np.ndarray:
        """The actions allowed now, bool ``(vocab_size,)`` (the sb3-contrib convention); all True without
        ``action_mask``. Reach it through wrappers with ``env.unwrapped.action_masks()``."""
        return self.episodes.action_masks(np.zeros(1, dtype=np.int64))[0]

    def render(self) -> str | None:
        text = self.episodes.render_text(0)
        if self.render_mode == "human":
            print(text)
            return None
        return text


def refuse_task_arguments(env_id: str, kwargs: Mapping[str, Any], owned: Sequence[str], hint: str = "") -> None:
    """A task env sets the TextGen arguments ``owned`` itself (its prompts, its reward): a ``ValueError`` naming
    the first one the caller passed, followed by ``hint``."""
    for name in owned:
        if name in kwargs:
            raise ValueError(f"{env_id} sets {name} itself{hint}")


POSITIVE_REPLY = " I love it: a wonderful, beautiful, happy and great success. Excellent!"
"""The scripted solver's continuation of every opening; its VADER compound score, 0.9823, is the optimum."""


def positive_reply(prompt: str, level: int) -> str:
    """The positivity task's scripted solver: the same fluent, very positive continuation of any opening."""
    return POSITIVE_REPLY


TASK = TaskSpec(
    name="positivity",
    env_id="TextGen-v0",
    description="continue an opening positively (VADER compound of the continuation)",
    levels=tuple(LEVELS),
    default_level=2,
    # Uniform tokens decode to near-neutral text: 0.016 ± 0.009 with the embedded model's vocabulary and
    # 0.013 ± 0.002 with the tiny model's (2000 completions of 32 tokens each).
    random_score={level: 0.015 for level in LEVELS},
    optimum_score={level: 0.9823 for level in LEVELS},
    solver=positive_reply,
)
