"""prefrl.text: the shipped corpus and tokenizer, the tiny GPT, and the synthetic text oracles."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.text import DATA_DIR, EOS, UNK, TextContinuationEnv, WordTokenizer, load_prompts
from prefrl.data import SKIP, TIE, ComparisonStore, Query
from prefrl.oracles import Oracle, SyntheticOracle, ask
from prefrl.text.corpus import build
from prefrl.text.model import GPT, GPTConfig, left_pad, load_checkpoint, save_checkpoint
from prefrl.text.oracles import (
    TextOracle,
    descriptiveness,
    reward_fn,
    subjective_words,
    text_segment,
    textblob_polarity,
    vader_sentiment,
)
from prefrl.text.pretrain import pretrain, token_stream

torch.set_num_threads(1)


def shipped_sentences() -> list[str]:
    return [s for s in (DATA_DIR / "corpus.txt").read_text().splitlines() if s]


# -- corpus and tokenizer ---------------------------------------------------------------------
def test_shipped_corpus_is_what_the_builder_makes(tmp_path):
    build(tmp_path)  # default size and seed
    for name in ("corpus.txt", "vocab.json", "prompts.txt"):
        assert (tmp_path / name).read_text() == (DATA_DIR / name).read_text(), f"rebuild envs/data/{name}"
    assert sum((DATA_DIR / n).stat().st_size for n in ("corpus.txt", "vocab.json", "prompts.txt")) < 1_000_000


def test_tokenizer_round_trips_the_corpus_and_marks_unknown_words(tmp_path):
    tok = WordTokenizer.load()
    sentences = shipped_sentences()
    assert len(sentences) >= 5000 and all(s.split()[-1] in {".", "!"} for s in sentences)
    for s in sentences[:500]:
        ids = tok.encode(s)
        assert UNK not in ids and tok.decode(ids) == s
    assert tok.encode("the movie was xyzzy")[-1] == UNK
    tok.save(tmp_path / "v.json")
    assert WordTokenizer.load(tmp_path / "v.json").words == tok.words
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="not a readable vocabulary"):
        WordTokenizer.load(tmp_path / "bad.json")
    assert all(p and UNK not in p for p in load_prompts(tok))


# -- tiny GPT ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained() -> tuple[GPT, WordTokenizer, dict[str, float]]:
    torch.manual_seed(0)
    tok = WordTokenizer.load()
    sentences = shipped_sentences()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_embd=64, n_head=4))
    metrics = pretrain(
        model,
        token_stream(sentences[:-200], tok),
        token_stream(sentences[-200:], tok),
        steps=120,
        batch_size=16,
        lr=5e-3,
        rng=np.random.default_rng(0),
    )
    return model, tok, metrics


def test_pretraining_lowers_held_out_loss(trained):
    _, tok, m = trained
    assert m["pretrain/val_loss_start"] == pytest.approx(np.log(tok.vocab_size), abs=0.3)  # uniform at init
    assert m["pretrain/val_loss_end"] < 0.6 * m["pretrain/val_loss_start"]
    assert m["pretrain/train_loss_end"] < m["pretrain/train_loss_start"] - 2.0


def test_kv_cache_generation_equals_full_recomputation(trained):
    model, tok, _ = trained
    ids, mask = left_pad([tok.encode(p) for p in ("the movie was", "i think the", "yesterday")])  # ragged
    for temperature in (0.0, 1.0):
        a, b = (
            model.generate(
                ids,
                mask,
                max_new_tokens=20,
                temperature=temperature,
                stop_tokens=tok.end_ids,
                generator=torch.Generator().manual_seed(3),
                use_cache=use_cache,
            )
            for use_cache in (True, False)
        )
        assert torch.equal(a, b)
    # a row stops at its end token and pads after it
    row = a[0].tolist()
    end = next(i for i, t in enumerate(row) if t in tok.end_ids)
    assert all(t == 0 for t in row[end + 1 :])


def test_left_padding_does_not_change_a_prompts_logits(trained):
    model, tok, _ = trained
    prompt = tok.encode("my friend said that")
    ids, mask = left_pad([prompt, [*prompt, *tok.encode("the book was")]])
    alone = model(torch.tensor([prompt]))[0]  # (T, V)
    padded = model(ids, mask)[0, -len(prompt) :]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


def test_trained_model_writes_corpus_like_sentences(trained):
    model, tok, _ = trained
    ids, mask = left_pad([tok.encode("the movie was")] * 32)
    out = model.generate(ids, mask, max_new_tokens=12, temperature=0.7, stop_tokens=tok.end_ids,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    ended = [(row == torch.tensor(tok.end_ids)[:, None]).any() for row in out]
    assert sum(bool(e) for e in ended) >= 24  # most samples finish a sentence within 12 words
    assert (out != EOS).any()


def test_checkpoint_round_trip_and_too_long_input(trained, tmp_path):
    model, tok, _ = trained
    save_checkpoint(tmp_path / "m.pt", model, words=tok.words)
    loaded, words = load_checkpoint(tmp_path / "m.pt")
    x = torch.tensor([tok.encode("the food was very")])
    assert words == tok.words
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ValueError, match="block_size"):
        model(torch.ones(1, model.cfg.block_size + 1, dtype=torch.long))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable tiny-GPT checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


# -- synthetic text oracles ---------------------------------------------------------------------
RESPONSES = {
    "great": "wonderful and lovely !",
    "good": "nice .",
    "flat": "quite long .",
    "bad": "terrible and awful .",
}


@pytest.fixture(scope="module")
def text_env() -> TextContinuationEnv:
    return TextContinuationEnv(tokenizer=WordTokenizer.load())


def seg(env: TextContinuationEnv, key: str, id: int) -> object:
    return text_segment(env, 0, env.tokenizer.encode(RESPONSES[key]), id=id)


def test_scorers_rank_positive_above_negative_and_spread_over_the_corpus():
    texts = [RESPONSES[k] for k in ("great", "flat", "bad")]
    for score in (vader_sentiment, textblob_polarity):
        great, flat, bad = score(texts)
        assert great > flat > bad and great > 0.3 and bad < -0.3
    v = vader_sentiment(shipped_sentences()[:300])
    assert (v > 0.3).mean() > 0.2 and (v < -0.3).mean() > 0.2 and (np.abs(v) < 0.05).mean() > 0.05


def test_text_segment_matches_what_the_environment_emits(text_env):
    s = seg(text_env, "bad", 7)
    tok = text_env.tokenizer
    assert s.length == 4 and s.terminated and text_env.response_length == s.T
    assert tok.decode(s.actions[: s.length]) == RESPONSES["bad"] and not s.actions[s.length :].any()
    flat = gym.wrappers.FlattenObservation(TextContinuationEnv(tokenizer=tok))
    obs, _ = flat.reset(options={"prompt": 0})
    for t, a in enumerate(s.actions[: s.length]):
        np.testing.assert_array_equal(s.obs[t], obs)
        obs, *_ = flat.step(int(a))
    assert not s.obs[s.length :].any()  # absorbing padding
    assert s.text == f"{tok.decode(text_env.prompts[0])} | {RESPONSES['bad']}"
    with pytest.raises(ValueError, match="ends neither"):
        text_segment(text_env, 0, tok.encode("nice and"), id=8)


def test_sentiment_oracle_answers_pairs_and_best_of_4_through_the_oracle_interface(text_env, tmp_path):
    segs = {k: seg(text_env, k, i) for i, k in enumerate(RESPONSES)}
    oracle = TextOracle("sentiment", tokenizer=text_env.tokenizer)
    assert isinstance(oracle, Oracle)
    queries = [
        Query(segments=(segs["bad"], segs["great"])),
        Query(segments=(segs["good"], segs["flat"])),
        Query(segments=(segs["flat"], segs["bad"], segs["great"], segs["good"])),
    ]
    answers = ask(oracle, queries)
    assert [c.label for c in answers] == [1, 0, 2]
    assert answers[2].segment_ids == (2, 3, 0, 1) and all(c.labeler == "sentiment-oracle" for c in answers)
    assert oracle.pending() == 0 and all(s.true_return == 0.0 for s in segs.values())  # queried segments unchanged
    with ComparisonStore(tmp_path / "labels.sqlite") as store:  # the core's store keeps text segments and answers
        store.add_many(answers, list(segs.values()))
        assert store.segments([3])[3].text.endswith(RESPONSES["bad"]) and len(store) == 3
    oracle.close()
    with pytest.raises(RuntimeError, match="closed"):
        oracle.submit(queries[:1])


def test_teacher_knobs_apply_to_text(text_env):
    tok = text_env.tokenizer
    a, b, c = seg(text_env, "great", 0), seg(text_env, "bad", 1), seg(text_env, "great", 2)
    assert ask(TextOracle("sentiment", tokenizer=tok), [Query(segments=(a, c))])[0].label == TIE
    always_wrong = TextOracle("sentiment", tokenizer=tok, teacher="mistake", epsilon=1.0)
    assert ask(always_wrong, [Query(segments=(a, b))])[0].label == 1
    skipper = TextOracle("sentiment", tokenizer=tok, teacher=SyntheticOracle(skip_threshold=0.5))
    assert ask(skipper, [Query(segments=(b, seg(text_env, "flat", 3)))])[0].label == SKIP
    with pytest.raises(ValueError, match="unknown text scorer"):
        TextOracle("sarcasm", tokenizer=tok)


def test_held_out_judge_agrees_with_sentiment_on_clear_cases_but_is_a_different_function(text_env):
    tok = text_env.tokenizer
    judge = TextOracle("judge", tokenizer=tok)
    a, b = seg(text_env, "bad", 0), seg(text_env, "good", 1)
    assert ask(judge, [Query(segments=(a, b))])[0].label == 1
    texts = shipped_sentences()[:300]
    v, j = vader_sentiment(texts), textblob_polarity(texts)
    assert np.corrcoef(v, j)[0, 1] > 0.5  # related ...
    assert (np.sign(v) != np.sign(j)).mean() > 0.05  # ... but not the same signal


def test_descriptiveness_counts_adjectives_and_adverbs(text_env):
    plain, rich, empty = descriptiveness(["the dog was a dog .", "the very old dog was really happy !", ""])
    assert plain == 0.0 and rich == pytest.approx(4 / 7) and empty == 0.0
    tok = text_env.tokenizer
    a = text_segment(text_env, 0, tok.encode("the dog ."), id=0)
    b = text_segment(text_env, 0, tok.encode("very old and quite small ."), id=1)
    assert ask(TextOracle("descriptive", tokenizer=tok), [Query(segments=(a, b))])[0].label == 1


def test_subjective_words_judge_descriptiveness_with_another_instrument():
    plain, rich, empty = subjective_words(["the dog went to the car again .", "the very old dog was happy !", ""])
    assert plain == 0.0 and rich == pytest.approx(3 / 6) and empty == 0.0  # "very old", "happy"
    assert descriptiveness(["the dog went to the car again ."])[0] > 0  # the tagger counts "again"
    texts = shipped_sentences()[:300]
    d, s = descriptiveness(texts), subjective_words(texts)
    assert np.corrcoef(d, s)[0, 1] > 0.3  # related ...
    assert (d != s).mean() > 0.2  # ... but a lexicon is not a tagger


def test_environment_reward_can_be_the_text_score(text_env):
    tok = text_env.tokenizer
    env = TextContinuationEnv(tokenizer=tok, reward_fn=reward_fn("sentiment", tok))
    env.reset(seed=0)
    for token in tok.encode("wonderful and lovely"):
        env.step(token)
    *_, r, term, _, info = env.step(tok.ids["!"])
    assert term and info["ended"]
    assert r == pytest.approx(vader_sentiment([RESPONSES["great"]])[0])


def test_core_segment_recorder_cuts_one_response_per_segment_and_text_oracles_label_them(text_env):
    from prefrl.config import EnvConfig
    from prefrl.make import make_vec_env
    from prefrl.segments import RecordSegments, SegmentBuffer, collect_random

    tok = text_env.tokenizer
    venv = make_vec_env(EnvConfig(id="prefrl/TextContinuation-v0", n_envs=2), seed=0)
    record = RecordSegments(venv, length=24, buffer=SegmentBuffer(100), env_id="prefrl/TextContinuation-v0")
    collect_random(record, min_segments=8, max_steps=1000, rng=np.random.default_rng(0))
    segs = list(record.buffer)[:8]
    for s in segs:  # each segment is one whole response: it starts at the prompt and ends with the episode
        assert s.start == 0 and s.terminated
        length, tokens = int(s.obs[0, 0]), s.obs[0, 1:]  # flattened Dict: length, then tokens
        prompt = [int(t) for t in tokens[: text_env.prompt_length] if t]
        assert length == 0 and prompt in [p.tolist() for p in text_env.prompts]
        again = text_segment(text_env, [p.tolist() for p in text_env.prompts].index(prompt), s.actions[: s.length],
                             id=s.id)  # fmt: skip
        np.testing.assert_array_equal(again.obs, s.obs)
    answers = ask(TextOracle("sentiment", tokenizer=tok, teacher="stoc", seed=0), [Query(segments=tuple(segs[:4]))])
    assert answers[0].segment_ids == tuple(s.id for s in segs[:4]) and answers[0].label in (TIE, 0, 1, 2, 3)
