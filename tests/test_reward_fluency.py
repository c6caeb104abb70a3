"""The fluency gate: likelihood under an LM times a repetition factor."""

from __future__ import annotations

import numpy as np
import pytest

from reward_models import make_reward_model
from reward_models.fluency import Fluency, distinct_n


def test_distinct_n_counts_repeated_word_bigrams():
    assert distinct_n("the cat sat on the mat") == 1.0
    assert distinct_n("great great great great great") == pytest.approx(1 / 4)
    assert distinct_n("one") == 1.0 and distinct_n("") == 1.0


def test_scores_are_the_clipped_likelihood_times_the_repetition_factor(tiny_model_dir):
    fluency = make_reward_model("fluency", model=tiny_model_dir, low=-12.0, high=-2.0, batch_size=2)
    model = Fluency(model=tiny_model_dir, low=-12.0, high=-2.0)
    prompts = ["The movie was"] * 4
    completions = [" a fine film", " good good good good good good", "", " and the story"]
    means = model.mean_logprobs(prompts, completions)
    assert np.isneginf(means[2]) and np.isfinite(means[[0, 1, 3]]).all()
    expected = np.clip((means - -12.0) / 10.0, 0, 1) * np.clip([1.0, 0.2 / 0.5, 1.0, 1.0], 0, 1)
    np.testing.assert_allclose(fluency(prompts, completions), expected, atol=1e-6)
    assert fluency(prompts, completions)[2] == 0.0  # nothing written, nothing fluent


def test_mean_logprobs_equal_a_forward_pass_of_each_pair_alone(tiny_model_dir):
    import torch

    model = Fluency(model=tiny_model_dir)
    prompts, completions = ["The movie was", "A"], [" a fine film with a story", " b"]
    batched = model.mean_logprobs(prompts, completions)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        prompt_ids = model.tokenizer(prompt)["input_ids"]
        ids = torch.tensor([prompt_ids + model.tokenizer(completion, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model.lm(input_ids=ids).logits[0, :-1], -1)
        tokens = ids[0, 1:]
        alone = logprobs[torch.arange(len(tokens)), tokens][len(prompt_ids) - 1 :].mean()
        assert batched[i] == pytest.approx(float(alone), abs=1e-4)


def test_bad_settings_are_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="high > low"):
        Fluency(model=tiny_model_dir, low=-1.0, high=-2.0)
    with pytest.raises(ValueError, match="min_distinct"):
        Fluency(model=tiny_model_dir, min_distinct=0.0)
