"""The text continuation environment: spaces, episode mechanics, the shipped corpus, and PPO on a toy vocabulary."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers prefrl/TextContinuation-v0)
from envs.text import EOS, PAD, TextContinuationEnv, WordTokenizer, load_prompts
from prefrl.make import check_spaces

# toy vocabulary: 0 <pad>, 1 <eos>, 2 ".", 3 "good", 4 "bad", 5 "the"
DOT, GOOD, BAD, THE = 2, 3, 4, 5


def good_fraction(prompt: np.ndarray, response: np.ndarray) -> float:
    return float(np.mean(response == GOOD))


def toy(**kw) -> TextContinuationEnv:
    return TextContinuationEnv(
        prompts=[[THE], [THE, BAD]], vocab_size=6, end_tokens=(EOS, DOT), response_length=4, **kw
    )


def test_shipped_env_passes_env_checker():
    env = gym.make("prefrl/TextContinuation-v0")
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["tokens"].shape == (env.unwrapped.prompt_length + 24,)
    assert env.action_space.n == WordTokenizer.load().vocab_size
    flat = gym.wrappers.FlattenObservation(env)  # what the core does to a Dict observation
    check_spaces(flat.observation_space, flat.action_space, "prefrl/TextContinuation-v0")
    assert flat.observation_space.shape == (env.unwrapped.prompt_length + 24 + 1,)


def test_toy_env_passes_env_checker():
    check_env(toy(reward_fn=good_fraction), skip_render_check=True)


def test_prompt_left_padded_response_appended_and_reward_paid_at_end():
    env = toy(reward_fn=good_fraction)
    obs, info = env.reset(seed=0, options={"prompt": 1})
    assert info["prompt_index"] == 1
    assert obs["tokens"].tolist() == [THE, BAD, PAD, PAD, PAD, PAD] and obs["length"].tolist() == [0]
    obs, r, term, trunc, _ = env.step(GOOD)
    assert obs["tokens"].tolist() == [THE, BAD, GOOD, PAD, PAD, PAD] and obs["length"].tolist() == [1]
    assert (r, term, trunc) == (0.0, False, False)
    obs, r, term, trunc, info = env.step(DOT)  # a sentence end stops the response
    assert term and not trunc
    assert r == pytest.approx(0.5)  # "good ." : half the tokens are "good"
    assert info["ended"] and info["response"].tolist() == [GOOD, DOT]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(GOOD)


def test_response_that_never_ends_is_penalized_at_the_length_limit():
    env = toy(reward_fn=good_fraction, no_end_penalty=-2.0)
    env.reset(seed=0, options={"prompt": 0})
    rewards = [env.step(GOOD)[1] for _ in range(3)]
    _, r, term, trunc, info = env.step(GOOD)
    assert rewards == [0.0, 0.0, 0.0]
    assert term and not trunc and not info["ended"]
    assert r == pytest.approx(1.0 - 2.0)


def test_eos_ends_and_shipped_prompts_decode():
    tok = WordTokenizer.load()
    assert tok.words[:3] == ["<pad>", "<eos>", "<unk>"] and tok.ids["."] in tok.end_ids
    prompts = load_prompts(tok)
    assert len(prompts) > 100 and all(2 not in p for p in prompts)  # no <unk> in the shipped prompts
    assert tok.encode(tok.decode(prompts[0])) == prompts[0]
    env = TextContinuationEnv(tokenizer=tok, render_mode="ansi")
    env.reset(seed=1)
    _, _, term, _, info = env.step(EOS)
    assert term and info["ended"] and info["response"].tolist() == [EOS]
    assert env.render().endswith("| <eos>")


def test_bad_arguments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="vocab_size"):
        TextContinuationEnv(prompts=[[3]])
    with pytest.raises(ValueError, match="0 is padding"):
        TextContinuationEnv(prompts=[[0, 3]], vocab_size=6)
    env = toy()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="token id"):
        env.step(99)


def test_ppo_learns_the_toy_task_from_the_reward_function_it_is_given():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    torch.set_num_threads(1)
    calls = []

    def reward_fn(prompt, response):
        calls.append(response.tolist())
        return good_fraction(prompt, response)

    venv = make_vec_env(lambda: toy(reward_fn=reward_fn), n_envs=4, seed=0)
    model = PPO("MultiInputPolicy", venv, n_steps=128, batch_size=64, learning_rate=1e-3, ent_coef=0.0, seed=0)

    def mean_return(n: int = 50) -> float:
        env = toy(reward_fn=good_fraction)
        total = 0.0
        for i in range(n):
            obs, _ = env.reset(seed=i)
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, done, _, _ = env.step(int(action))
                total += r
        return total / n

    model.learn(3_000)
    assert calls and all(1 <= len(c) <= 4 for c in calls)  # every finished episode asked the reward function
    # the best response is "good good good ." (0.75); a uniformly random policy averages well below 0
    assert mean_return() >= 0.5
