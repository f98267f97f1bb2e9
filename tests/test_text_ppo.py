"""prefrl.text.ppo: the KL controller, GAE, and PPO with a KL penalty on the tiny GPT."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from envs.text import load_prompts
from prefrl.config import ConfigError
from prefrl.text.corpus import POSITIVE
from prefrl.text.lm import TinyLM, TinyTokenizer, load_lm, logprobs
from prefrl.text.model import GPT, GPTConfig
from prefrl.text.oracles import response_text, vader_sentiment
from prefrl.text.ppo import KLController, PPOConfig, TextPPO, gae, whiten

torch.set_num_threads(1)

TOK = TinyTokenizer.load()
PROMPTS = load_prompts(TOK)
POSITIVE_IDS = torch.tensor([TOK.ids[w] for w in POSITIVE])  # 25 of the 184 words: "wonderful", "great", ...


def tiny(seed: int = 0) -> TinyLM:
    """A randomly initialized tiny GPT (every word about equally likely): the same model for the same seed."""
    torch.manual_seed(seed)
    return TinyLM(GPT(GPTConfig(vocab_size=TOK.vocab_size, n_layer=2, n_embd=64, n_head=4)), TOK)


def pays_for_positive_words(rollout) -> torch.Tensor:
    """Score: how many positive words (a noise-free cousin of a sentiment score) the response has."""
    P = rollout.prompt_width
    return (torch.isin(rollout.tokens[:, P:], POSITIVE_IDS) & rollout.response_mask[:, P:]).float().sum(1)  # (B,)


def batches(n: int, size: int, seed: int) -> list[list[list[int]]]:
    rng = np.random.default_rng(seed)
    return [[PROMPTS[i] for i in rng.integers(len(PROMPTS), size=size)] for _ in range(n)]


def small(**kw) -> PPOConfig:
    base = dict(batch_size=16, minibatches=2, ppo_epochs=4, lr=2e-3, response_length=8, no_end_penalty=0.0)
    return PPOConfig(**{**base, **kw})


# -- the KL controller --------------------------------------------------------------------------
def test_adaptive_kl_controller_follows_the_clipped_proportional_rule():
    c = KLController(0.2, target=6.0, horizon=1000)
    assert c.update(6.6, n=100) == pytest.approx(0.2 * (1 + 0.1 * 0.1))  # error 0.1, K = 100 / 1000
    c = KLController(0.2, target=6.0, horizon=1000)
    assert c.update(60.0, n=100) == pytest.approx(0.2 * (1 + 0.2 * 0.1))  # error 9 clipped to 0.2
    c = KLController(0.2, target=6.0, horizon=1000)
    assert c.update(0.0, n=100) == pytest.approx(0.2 * (1 - 0.2 * 0.1))  # error -1 clipped to -0.2
    assert c.update(6.0, n=100) == pytest.approx(0.2 * (1 - 0.2 * 0.1))  # on target: unchanged
    betas = [c.update(12.0, n=64) for _ in range(5)]
    assert all(b > a for a, b in itertools.pairwise(betas))  # above target: β rises
    betas = [c.update(1.0, n=64) for _ in range(5)]
    assert all(b < a for a, b in itertools.pairwise(betas))  # below target: β falls
    resumed = KLController(1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(c.state_dict())
    assert resumed.update(9.0, n=64) == c.update(9.0, n=64)


def test_fixed_kl_controller_never_changes():
    c = KLController(0.05)
    assert [c.update(kl, n=64) for kl in (0.0, 3.0, 1e6)] == [0.05, 0.05, 0.05]
    for bad in (dict(init=-1.0), dict(init=0.1, target=0.0), dict(init=0.1, target=1.0, horizon=0)):
        with pytest.raises(ConfigError):
            KLController(**bad)


# -- GAE and whitening --------------------------------------------------------------------------
def test_gae_matches_its_definition_and_stops_at_each_response_end():
    g = torch.Generator().manual_seed(0)
    B, N, gamma, lam = 4, 7, 0.9, 0.8
    rewards, values = torch.randn(B, N, generator=g), torch.randn(B, N, generator=g)
    lengths = [7, 3, 1, 5]
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]  # (B, N) a prefix per row
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    for b, n in enumerate(lengths):
        v = [*values[b, :n].tolist(), 0.0]  # nothing after the last token
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            want = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert adv[b, t].item() == pytest.approx(want, abs=1e-5)
            assert ret[b, t].item() == pytest.approx(want + v[t], abs=1e-5)
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()
    # gamma = lam = 1: the advantage is the sum of the remaining rewards minus the value
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[1, 0].item() == pytest.approx(rewards[1, :3].sum().item() - values[1, 0].item(), abs=1e-5)

    w = whiten(rewards, mask)
    assert w[mask].mean().item() == pytest.approx(0, abs=1e-5)
    assert w[mask].std(unbiased=False).item() == pytest.approx(1, abs=1e-3)
    assert (w[~mask] == 0).all()
    scaled = whiten(rewards, mask, shift_mean=False)  # a positive rescaling only
    torch.testing.assert_close(scaled[mask], rewards[mask] / rewards[mask].std(unbiased=False), atol=1e-4, rtol=1e-4)


# -- PPO on the tiny GPT ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs() -> dict[float, list[dict[str, float]]]:
    """Twelve PPO steps with β = 0 and with a large fixed β, on a score that pays for positive words."""
    out = {}
    for beta in (0.0, 2.0):
        cfg = small(init_kl_coef=beta, adaptive_kl=False, lr=3e-3, seed=0)
        trainer = TextPPO(tiny(0), pays_for_positive_words, cfg)
        out[beta] = [trainer.step(p) for p in batches(12, 16, seed=1)]
    return out


def test_ppo_raises_the_score(runs):
    free = runs[0.0]
    before, after = np.mean([s["ppo/score"] for s in free[:3]]), np.mean([s["ppo/score"] for s in free[-3:]])
    # 8 words drawn about uniformly hold ~8 * 25 / 184 ≈ 1.1 positive ones; measured over seeds 0-3:
    # first three steps 0.8-1.4, last three 4.2-6.2
    assert before < 1.7
    assert after > before + 2.0 and after > 3.0
    assert free[-1]["ppo/entropy"] < free[0]["ppo/entropy"] - 1.0  # measured 5.2 -> 2.6-3.3 nats


def test_kl_penalty_keeps_the_policy_near_the_reference(runs):
    free, held = (np.mean([s["ppo/kl"] for s in runs[beta][-3:]]) for beta in (0.0, 2.0))
    assert free > 8.0  # measured 11-16 nats per response over seeds 0-3
    assert held < 0.35 * free  # measured 1.6-2.7 nats
    assert all(s["ppo/beta"] == 2.0 for s in runs[2.0])


def test_ppo_teaches_the_shipped_tiny_gpt_to_write_positive_sentences():
    lm = load_lm("tiny")  # pretrained on the shipped corpus

    def sentiment(rollout) -> torch.Tensor:
        return torch.as_tensor(vader_sentiment([response_text(r, lm.tokenizer) for r in rollout.responses()]))

    cfg = PPOConfig(batch_size=32, minibatches=2, lr=1e-3, response_length=10, adaptive_kl=False, init_kl_coef=0.0)
    trainer = TextPPO(lm, sentiment, cfg)
    stats = [trainer.step(p) for p in batches(8, 32, seed=0)]
    before, after = (np.mean([s["ppo/score"] for s in part]) for part in (stats[:2], stats[-2:]))
    assert before < 0.25  # measured ~0.1 over seeds 0-2: the corpus is as negative as it is positive
    assert after > before + 0.25 and after > 0.35  # measured 0.54-0.62
    assert min(s["ppo/ended_frac"] for s in stats) > 0.7  # still mostly whole sentences: measured ≥ 0.84
    assert max(s["ppo/gen_logprob_dev"] for s in stats) < 1e-4  # the KV-cache sampler agrees with a full pass


def test_the_no_end_penalty_teaches_the_policy_to_finish_its_responses():
    cfg = small(no_end_penalty=-1.0, adaptive_kl=False, init_kl_coef=0.0, lr=3e-3, seed=0)
    trainer = TextPPO(tiny(0), lambda rollout: torch.zeros(len(rollout)), cfg)
    stats = [trainer.step(p) for p in batches(10, 16, seed=1)]
    for s in stats:  # the score is 0: the reward is the penalty of every unfinished response
        assert s["ppo/reward"] == pytest.approx(-(1 - s["ppo/ended_frac"]))
    ended = [s["ppo/ended_frac"] for s in stats]
    assert np.mean(ended[:2]) < 0.3  # 3 end tokens of 184: ~12 % of random 8-word responses end
    assert np.mean(ended[-2:]) > 0.7  # measured 0.8-1.0 over seeds 0-3
    assert stats[-1]["ppo/response_length"] < stats[0]["ppo/response_length"] - 2


def test_stored_logprobs_are_the_tempered_ones_a_fresh_forward_pass_gives():
    lm = tiny(1)
    trainer = TextPPO(lm, pays_for_positive_words, small(seed=3))
    stats = trainer.step(batches(1, 16, seed=4)[0])
    assert stats["ppo/first_ratio_dev"] < 1e-5  # ratio = 1 before the first gradient step
    assert stats["ppo/gen_logprob_dev"] < 1e-4  # the KV-cache sampler drew from the distribution PPO assumes
    rollout = lm.generate(batches(1, 4, seed=5)[0], 8, temperature=0.7, generator=torch.Generator().manual_seed(0))
    P = rollout.prompt_width
    mask = rollout.response_mask[:, P:]
    with torch.no_grad():
        mine, _, _ = trainer.evaluate(lm, rollout.tokens, rollout.attention_mask, P)  # (B, N)
        tempered = logprobs(lm, rollout, temperature=0.7)[:, P:]
        plain = logprobs(lm, rollout)[:, P:]  # temperature 1
    torch.testing.assert_close(mine[mask], tempered[mask], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mine[mask], rollout.logprobs[:, P:][mask], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(mine[mask], plain[mask], atol=1e-3)


def test_adaptive_beta_moves_towards_the_target_during_training():
    trainer = TextPPO(tiny(0), pays_for_positive_words, small(init_kl_coef=0.1, target_kl=0.01, kl_horizon=100, seed=0))
    stats = [trainer.step(p) for p in batches(3, 16, seed=2)]
    assert stats[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-5)  # first batch: π is still ρ
    assert stats[-1]["ppo/kl"] > 0.01
    assert stats[-1]["ppo/next_beta"] > stats[-1]["ppo/beta"] > stats[0]["ppo/next_beta"]


def test_save_and_load_resume_to_the_same_next_step(tmp_path):
    p1, p2 = batches(2, 16, seed=6)
    cfg = small(seed=7, init_kl_coef=0.1, target_kl=1.0, kl_horizon=50)
    a = TextPPO(tiny(2), pays_for_positive_words, cfg)
    a.step(p1)
    a.save(tmp_path / "ppo.pt")
    after_a = a.step(p2)
    b = TextPPO(tiny(2), pays_for_positive_words, cfg).load(tmp_path / "ppo.pt")
    after_b = b.step(p2)
    timing = {"ppo/tokens_per_s", "ppo/gen_tokens_per_s"}
    assert {k: v for k, v in after_a.items() if k not in timing} == {
        k: v for k, v in after_b.items() if k not in timing
    }
    for x, y in zip(a.policy.parameters(), b.policy.parameters(), strict=True):
        assert torch.equal(x, y)
    assert a.kl.beta == b.kl.beta != 0.1

    with pytest.raises(ConfigError, match="different initial model"):
        TextPPO(tiny(3), pays_for_positive_words, cfg).load(tmp_path / "ppo.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a readable TextPPO checkpoint"):
        TextPPO(tiny(2), pays_for_positive_words, cfg).load(tmp_path / "junk.pt")


def test_bad_input_fails_with_a_message_that_names_the_fix():
    with pytest.raises(ConfigError, match="minibatches"):
        PPOConfig(batch_size=10, minibatches=4)
    with pytest.raises(ConfigError, match="temperature"):
        PPOConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="adaptive_kl = false"):
        PPOConfig(target_kl=0.0)
    cfg = small()
    cfg.minibatches = 5  # an override after construction is checked when the trainer is built
    with pytest.raises(ConfigError, match=r"ppo\.minibatches = 5 must divide batch_size"):
        TextPPO(tiny(0), pays_for_positive_words, cfg)
    trainer = TextPPO(tiny(0), pays_for_positive_words, small())
    with pytest.raises(ConfigError, match="batch_size = 16"):
        trainer.step(PROMPTS[:3])
    trainer.reward_fn = lambda rollout: torch.zeros(3)
    with pytest.raises(ValueError, match=r"must return \(16,\)"):
        trainer.step(batches(1, 16, seed=0)[0])
