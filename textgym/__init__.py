"""textgym: text generation as Gymnasium environments.

Importing textgym registers its environments; it imports neither torch nor transformers, which load only
when an environment is made::

    import gymnasium as gym
    import textgym

    env = gym.make("TextGen-v0")
    vec = gym.make_vec("TextGen-v0", num_envs=8)
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

__version__ = "0.1.0"

if "TextGen-v0" not in registry:  # re-importing (e.g. via "textgym:TextGen-v0") must not warn
    register(
        id="TextGen-v0",
        entry_point="textgym.envs.text_gen:TextGenEnv",
        vector_entry_point="textgym.envs.vector:TextGenVectorEnv",
        kwargs={"max_prompt_tokens": 64, "max_new_tokens": 32, "reward_model": "vader"},
    )

if "TextGenPreference-v0" not in registry:
    # TextGen-v0 with a learned reward: the shipped MiniLM-head model trained on synthetic preferences whose gold
    # label is VADER positivity (reward_models/data/README.md), so proxy and gold rewards can be compared.
    register(
        id="TextGenPreference-v0",
        entry_point="textgym.envs.text_gen:TextGenEnv",
        vector_entry_point="textgym.envs.vector:TextGenVectorEnv",
        kwargs={"max_prompt_tokens": 64, "max_new_tokens": 32, "reward_model": "positivity-minilm"},
    )

if "ConceptCoverage-v0" not in registry:
    # Use all of 2-4 concepts in one fluent sentence (textgym/envs/concepts.py).
    register(
        id="ConceptCoverage-v0",
        entry_point="textgym.envs.concepts:ConceptCoverageEnv",
        vector_entry_point="textgym.envs.concepts:ConceptCoverageVectorEnv",
        kwargs={"max_prompt_tokens": 96, "max_new_tokens": 32, "chat_template": True},
    )

if "VerifiableInstructions-v0" not in registry:
    # Copy, reverse, sort words, count a letter, add or multiply numbers (textgym/envs/instructions.py).
    register(
        id="VerifiableInstructions-v0",
        entry_point="textgym.envs.instructions:VerifiableInstructionsEnv",
        vector_entry_point="textgym.envs.instructions:VerifiableInstructionsVectorEnv",
        kwargs={"max_prompt_tokens": 96, "max_new_tokens": 24},
    )

if "ReasoningGym-v0" not in registry:
    # Any reasoning-gym dataset (the optional extra textgym[reasoning]), scored by its own score_answer
    # (textgym/envs/reasoning_gym.py); `textgym bench --tasks rg:DATASET` registers ReasoningGym/DATASET-v0.
    register(
        id="ReasoningGym-v0",
        entry_point="textgym.envs.reasoning_gym:ReasoningGymEnv",
        vector_entry_point="textgym.envs.reasoning_gym:ReasoningGymVectorEnv",
    )

if "LengthFormat-v0" not in registry:
    # The suite's "constraints" task: a word count and a format stated in the prompt, fluency-gated.
    register(
        id="LengthFormat-v0",
        entry_point="textgym.envs.length_format:LengthFormatEnv",
        vector_entry_point="textgym.envs.length_format:LengthFormatVectorEnv",
        kwargs={"max_prompt_tokens": 96, "max_new_tokens": 64, "chat_template": True},
    )

if "ProxyPositivity-v0" not in registry:
    # The suite's "overoptimization" task: positivity trained on a learned proxy, judged by fluent positivity.
    register(
        id="ProxyPositivity-v0",
        entry_point="textgym.envs.proxy_positivity:ProxyPositivityEnv",
        vector_entry_point="textgym.envs.proxy_positivity:ProxyPositivityVectorEnv",
        kwargs={"max_prompt_tokens": 64, "max_new_tokens": 32},
    )

if "GuessNumber-v1" not in registry:
    # Multi-turn: find a number from 1 to N, answered higher / lower / correct (textgym/envs/guess_number.py).
    register(
        id="GuessNumber-v1",
        entry_point="textgym.envs.guess_number:GuessNumberEnv",
        vector_entry_point="textgym.envs.guess_number:GuessNumberVectorEnv",
    )

if "TwentyQuestions-v1" not in registry:
    # Multi-turn: find an object by yes/no questions about its attributes (textgym/envs/twenty_questions.py).
    register(
        id="TwentyQuestions-v1",
        entry_point="textgym.envs.twenty_questions:TwentyQuestionsEnv",
        vector_entry_point="textgym.envs.twenty_questions:TwentyQuestionsVectorEnv",
    )

if "WordGuess-v1" not in registry:
    # Multi-turn: find a secret word of a list from Wordle-style letter marks (textgym/envs/word_guess.py).
    register(
        id="WordGuess-v1",
        entry_point="textgym.envs.word_guess:WordGuessEnv",
        vector_entry_point="textgym.envs.word_guess:WordGuessVectorEnv",
    )
