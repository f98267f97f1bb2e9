"""The summarize task: articles and prompts, the summary labeler, copy rate and abstractive judge, the shipped ρ."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from envs.text import DATA_DIR, UNK, TextContinuationEnv, WordTokenizer, load_prompts
from prefrl.data import Query
from prefrl.oracles import ask
from prefrl.text.corpus import (
    SEPARATOR,
    SUMMARY_MIX,
    article_prompt,
    build_summarize,
    generate_articles,
    split_prompt,
    summarize,
    summarize_tokenizer,
)
from prefrl.text.lm import TINY_MODELS, load_lm
from prefrl.text.oracles import (
    PromptScorer,
    TextOracle,
    abstractive_judge,
    copy_rate,
    reward_fn,
    score_texts,
    summary_labeler,
    text_segment,
    verbatim,
)
from prefrl.text.rlhf import load_prompt_texts, load_text_config, plot_text, train_text

ARTICLE = "the movie was wonderful . the town looked dull . tl;dr"
COPY = "the movie was wonderful ."
PARAPHRASE = "the film seemed great , but the city was gloomy ."
UNRELATED = "my sister hated the coffee ."
SALAD = "movie wonderful town dull ."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: 2 threads only add overhead


def scores(texts: list[str]) -> dict[str, np.ndarray]:
    prompts = [ARTICLE] * len(texts)
    named = {"labeler": summary_labeler, "judge": abstractive_judge, "copy": copy_rate, "verbatim": verbatim}
    return {k: score_texts(f, texts, prompts) for k, f in named.items()}


# -- scorers ----------------------------------------------------------------------------------
def test_a_verbatim_copy_is_all_copied_and_what_the_labeler_likes_best():
    s = scores([COPY, PARAPHRASE, UNRELATED, SALAD, ""])
    copy, para, unrelated, salad, empty = range(5)
    assert s["copy"][copy] == 1.0 and s["verbatim"][copy] == 1.0
    # every word true to the article; of its words movie/was/wonderful/town/looked/dull it tells three, and
    # "looked" by a synonym ("was", a quarter): coverage 3.25 / 6
    assert s["labeler"][copy] == pytest.approx((1 + 3.25 / 6) / 2)
    assert s["labeler"][copy] > s["labeler"][para] > s["labeler"][unrelated]  # synonyms are hard to verify
    assert s["labeler"][unrelated] < 0.1 and s["judge"][unrelated] < 0.1
    assert s["copy"][para] < 0.2 and s["verbatim"][para] == 0.0  # the paraphrase says it in other words
    assert s["judge"][para] > 0.9 > 0.5 > s["judge"][copy]  # the held-out judge values faithful abstraction
    assert s["labeler"][salad] < 0.5 * s["labeler"][copy]  # word salad of the article's words is no summary
    for key in s:
        assert s[key][empty] == 0.0, key


def test_copy_rate_counts_trigrams_of_the_article_only():
    prompts = [ARTICLE] * 3
    texts = ["the movie was dull .", "wonderful .", "the town looked wonderful ."]
    rates = copy_rate(texts, prompts)
    assert rates[0] == pytest.approx(1 / 3)  # "the movie was" is in the article; "movie was dull", "was dull ." not
    assert rates[1] == pytest.approx(1.0)  # shorter than a trigram: its bigram "wonderful ." is in the article
    assert rates[2] == pytest.approx(1 / 3)
    assert "tl;dr" not in split_prompt(ARTICLE) and split_prompt("no separator here") == "no separator here"


def test_prompt_scorers_need_the_prompt_and_reach_it_through_every_path():
    with pytest.raises(ValueError, match="pass the prompts too"):
        score_texts(summary_labeler, [COPY])
    with pytest.raises(ValueError, match="1 texts but 2 prompts"):
        summary_labeler([COPY], [ARTICLE, ARTICLE])
    assert isinstance(summary_labeler, PromptScorer)
    assert score_texts(lambda texts: np.ones(len(texts)), [COPY]).tolist() == [1.0]  # plain scorers as before

    tok = summarize_tokenizer()
    fn = reward_fn("summary", tok)
    prompt = np.array(tok.encode(ARTICLE))
    assert fn(prompt, np.array(tok.encode(COPY))) == pytest.approx(summary_labeler([COPY], [ARTICLE])[0])
    assert fn(prompt, np.array(tok.encode(UNRELATED))) < 0.1

    env = TextContinuationEnv(prompts=[tok.encode(ARTICLE)], tokenizer=tok, response_length=14)
    segs = [text_segment(env, 0, tok.encode(t), id=i) for i, t in enumerate([UNRELATED, COPY])]
    assert ask(TextOracle("summary", tokenizer=tok), [Query(segments=tuple(segs))])[0].label == 1
    assert ask(TextOracle("abstractive", tokenizer=tok), [Query(segments=tuple(segs))])[0].label == 1
    assert TextOracle("copy", tokenizer=tok).scores(segs).tolist() == [0.0, 1.0]


# -- articles, prompts, env -------------------------------------------------------------------
def test_articles_are_deterministic_short_and_shipped_as_built(tmp_path):
    a = generate_articles(50, rng=np.random.default_rng(3))
    assert (
        a == generate_articles(50, rng=np.random.default_rng(3)) != generate_articles(50, rng=np.random.default_rng(4))
    )
    assert all(len(art) == 2 and all(len(s.split()) <= 8 and s.split()[-1] in ".!" for s in art) for art in a)
    kinds = {k: [summarize(art, k, rng=np.random.default_rng(0)) for art in a] for k, _ in SUMMARY_MIX}
    assert kinds["lead"] == [art[0] for art in a] and kinds["second"] == [art[1] for art in a]
    prompts = [article_prompt(art) for art in a]
    assert verbatim(kinds["paraphrase"], prompts).mean() < 0.2 and copy_rate(kinds["fusion"], prompts).mean() < 0.3

    build_summarize(tmp_path)
    for name in ("summarize_prompts.txt", "summarize_vocab.json"):
        assert (tmp_path / name).read_text() == (DATA_DIR / name).read_text(), f"rebuild envs/data/{name}"
    tok = WordTokenizer.load(DATA_DIR / "summarize_vocab.json")
    assert tok.words[:-1] == WordTokenizer.load().words and tok.words[-1] == SEPARATOR  # old ids unchanged
    shipped = load_prompts(tok, DATA_DIR / "summarize_prompts.txt")
    assert len(shipped) == 600 and all(UNK not in p and p[-1] == tok.ids[SEPARATOR] for p in shipped)
    assert max(len(p) for p in shipped) + 14 <= 32  # prompt + a 14-token summary fit the tiny GPT's context
    assert load_prompt_texts("summarize_prompts.txt")[0] == tok.decode(shipped[0])


def test_env_with_summarize_prompts_passes_the_checker_and_pays_the_labeler_score():
    tok = summarize_tokenizer()
    prompts = load_prompts(tok, DATA_DIR / "summarize_prompts.txt")[:20]
    env = TextContinuationEnv(prompts=prompts, tokenizer=tok, response_length=14, reward_fn=reward_fn("summary", tok))
    check_env(env, skip_render_check=True)
    _, info = env.reset(seed=0, options={"prompt": 3})
    article = tok.decode(prompts[3])
    lead = split_prompt(article).split(" . ")[0].split(" ! ")[0].split()
    lead.append(split_prompt(article).split()[len(lead)])  # its end mark
    total, done = 0.0, False
    for word in lead:
        _, reward, done, _, info = env.step(tok.ids[word])
        total += reward
    assert done and info["ended"]
    assert total == pytest.approx(summary_labeler([" ".join(lead)], [article])[0]) and total > 0.5


# -- the shipped ρ and a run ------------------------------------------------------------------
def test_shipped_summarize_model_sometimes_copies_and_sometimes_not():
    path = TINY_MODELS["tiny-summarize"]
    assert path.stat().st_size < 1_500_000
    lm = load_lm(path)
    assert lm.tokenizer.words == WordTokenizer.load(DATA_DIR / "summarize_vocab.json").words
    prompts = load_prompt_texts("summarize_prompts.txt")[:96]
    rollout = lm.generate([lm.tokenizer.encode(p) for p in prompts], 14, generator=torch.Generator().manual_seed(0))
    texts = [lm.tokenizer.decode([t for t in r if t > 1]) for r in rollout.responses()]
    copied = verbatim(texts, prompts).mean()
    assert 0.15 < copied < 0.6  # ρ is a mix: a PPO policy has both behaviours to choose from
    assert 0.3 < copy_rate(texts, prompts).mean() < 0.8
    assert rollout.ended.float().mean() > 0.9 and summary_labeler(texts, prompts).mean() > 0.4


def test_a_short_run_on_the_labeler_raises_its_score_logs_copy_rates_and_plots_them(tmp_path):
    cfg = load_text_config(
        None,
        [
            "model='tiny-summarize'", "prompts='summarize_prompts.txt'", "oracle.scorer='summary'",
            "oracle.judge='abstractive'", "reward_source='oracle'", "ppo_steps=10", "eval_every=10",
            "eval_prompts=32", "ppo.batch_size=32", "ppo.minibatches=2", "ppo.ppo_epochs=2", "ppo.response_length=14",
            "ppo.lr=3e-4", "ppo.init_kl_coef=0.01",
        ],
    )  # fmt: skip
    result = train_text(cfg, tmp_path, progress=False)
    assert result["eval/score"] > result["eval/rho_score"] + 0.03  # PPO on the labeler's score itself
    assert result["eval/copy"] > result["eval/rho_copy"]  # ... and it gets there by copying more
    with (tmp_path / "metrics.csv").open() as f:
        evals = [r for r in csv.DictReader(f) if r.get("eval/copy")]
    assert [int(r["step"]) for r in evals] == [0, 10]
    assert float(evals[0]["eval/copy"]) == pytest.approx(float(evals[0]["eval/rho_copy"]), abs=0.15)
    assert plot_text(tmp_path)[0].stat().st_size > 10_000
