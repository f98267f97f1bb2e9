"""Synthetic text oracles: sentiment (VADER), a held-out judge (TextBlob polarity), descriptiveness, summaries.

A text segment is one response: its ``actions`` are the response's token ids, its last real step
carries the response's score as ``true_rewards``, and steps after the end are absorbing padding,
exactly as the core's segment recorder cuts an episode of the text environment. So the core's
:class:`~prefrl.oracles.SyntheticOracle` compares text segments by their scores, with all of its
teacher knobs (rationality, mistakes, ties, skips), on pairs and on best-of-k queries.

:class:`TextOracle` scores each queried response with a text scorer, writes the score into the
segment's ``true_rewards`` and hands the query to such a teacher. Both scorers run offline:
``vaderSentiment`` ships its lexicon, and TextBlob's pattern analyzer and tagger need no download.
The *judge* is meant to be held out: train the reward on the sentiment teacher's labels and use the
judge only to measure whether the policy's gains are real or over-optimized.

Summaries are judged against their article, so their scorers read the prompt too: a
:class:`PromptScorer` takes ``(texts, prompts)``, every other scorer ``texts`` alone, and
:func:`score_texts` calls either kind (the environment's ``reward_fn``, :class:`TextOracle` and the
text RLHF run all go through it). For the summarize task (:mod:`prefrl.text.corpus`; the article is
the prompt before its ``tl;dr``):

- ``summary`` (the labeler, after Ziegler et al. 2019's, who checked summaries for accuracy and
  coverage; see :func:`summary_labeler`), which rewards copying because a copied word is the easiest
  to verify;
- ``abstractive`` (a held-out judge that values faithful content *not* copied verbatim; see
  :func:`abstractive_judge`);
- ``copy`` (the share of the summary's trigrams found in the article: the "novel n-grams" statistic
  inverted; see :func:`copy_rate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import cache
from itertools import pairwise
from typing import Any

import gymnasium as gym
import numpy as np

from envs.text import DATA_DIR, EOS, PAD, SENTENCE_ENDS, TextContinuationEnv, WordTokenizer
from prefrl.config import ConfigError
from prefrl.data import Comparison, Query, Segment
from prefrl.oracles import SyntheticOracle, make_teacher
from prefrl.text import INSTALL_TEXT
from prefrl.text.corpus import (
    FUNCTION_WORDS,
    LINKING_WORDS,
    article_sentences,
    concept,
    content_words,
    split_prompt,
)


class PromptScorer:
    """A scorer that reads each response's prompt too: ``(texts, prompts) -> (n,)`` scores.

    Wrap a function with it (it works as a decorator) so that :func:`score_texts` passes the prompts.
    """

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], np.ndarray]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "prompt_scorer")
        self.__doc__ = fn.__doc__

    def __call__(self, texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
        if len(texts) != len(prompts):
            raise ValueError(
                f"{self.__name__}: {len(texts)} texts but {len(prompts)} prompts; pass one prompt per text"
            )
        return self.fn(texts, prompts)


Scorer = Callable[[Sequence[str]], np.ndarray] | PromptScorer
"""Texts -> ``(n,)`` float scores, higher is better; or a :class:`PromptScorer` (texts, prompts) -> scores."""


def reads_prompt(scorer: Scorer) -> bool:
    return isinstance(scorer, PromptScorer)


def score_texts(scorer: Scorer, texts: Sequence[str], prompts: Sequence[str] | None = None) -> np.ndarray:
    """``(n,)`` scores of ``texts``; a :class:`PromptScorer` also gets their ``prompts`` (then required)."""
    if isinstance(scorer, PromptScorer):
        if prompts is None:
            raise ValueError(f"the {scorer.__name__} scorer reads each response's prompt; pass the prompts too")
        return scorer(texts, prompts)
    return scorer(texts)


@cache
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError(f"the sentiment oracle needs the vaderSentiment package; {INSTALL_TEXT}") from None
    return SentimentIntensityAnalyzer()


def vader_sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment in [-1, 1] of each text."""
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


@cache
def _pattern(kind: str) -> Any:
    """TextBlob's pattern analyzer, tagger or sentiment lexicon: they ship their data (TextBlob's NLTK parts would
    need downloads)."""
    try:
        from textblob.en import sentiment as lexicon
        from textblob.en.sentiments import PatternAnalyzer
        from textblob.en.taggers import PatternTagger
    except ImportError:
        raise ConfigError(f"the judge and descriptiveness oracles need the textblob package; {INSTALL_TEXT}") from None
    return {"analyzer": PatternAnalyzer, "tagger": PatternTagger, "lexicon": lambda: lexicon}[kind]()


def textblob_polarity(texts: Sequence[str]) -> np.ndarray:
    """TextBlob's pattern-analyzer polarity in [-1, 1] of each text (the held-out judge)."""
    analyzer = _pattern("analyzer")
    return np.array([analyzer.analyze(t).polarity for t in texts], dtype=np.float64)


def subjective_words(texts: Sequence[str]) -> np.ndarray:
    """Share of a text's words that TextBlob's pattern lexicon rates as subjective (rated adjectives and the
    intensifiers before them), in [0, 1]; 0 for no words. The held-out judge of the descriptiveness task: a
    hand-rated lexicon, where the labeler uses a part-of-speech tagger (which also counts "again",
    and cannot tell a vivid word from a dull one)."""
    lexicon = _pattern("lexicon")
    out = []
    for t in texts:
        words = [w for w in t.split() if any(c.isalnum() for c in w)]
        rated = lexicon.assessments([(w, None) for w in words])
        out.append(sum(len(ws) for ws, _, subjectivity, _ in rated if subjectivity > 0) / len(words) if words else 0.0)
    return np.array(out, dtype=np.float64)


def descriptiveness(texts: Sequence[str]) -> np.ndarray:
    """Fraction of a text's words that are adjectives or adverbs (pattern tagger), in [0, 1]; 0 for no words."""
    tagger = _pattern("tagger")
    out = []
    for t in texts:
        tags = [tag for word, tag in tagger.tag(t) if any(c.isalnum() for c in word)]
        out.append(sum(tag.startswith(("JJ", "RB")) for tag in tags) / len(tags) if tags else 0.0)
    return np.array(out, dtype=np.float64)


# -- summaries --------------------------------------------------------------------------------
SYNONYM_CREDIT = 0.25
"""What the summary labeler credits a word that the article says only in other words (a synonym): a
quarter, because a paraphrase is harder to check against the article than a copied word."""


@cache
def _corpus_bigrams() -> frozenset[tuple[str, str]]:
    """Every pair of adjacent words in the shipped corpus: what the labelers know as well-formed."""
    words = (line.split() for line in (DATA_DIR / "corpus.txt").read_text().splitlines())
    return frozenset(pair for w in words for pair in pairwise(w))


def fluency(text: str) -> float:
    """Share of a text's adjacent word pairs seen in the shipped corpus (1 for a single word, 0 for none).

    Word salad and repetitions (``movie movie``, ``wonderful town``) score low; any sentence of the
    grammar about 0.98 (a few rare word pairs never came up in the corpus).
    """
    w = text.split()
    if len(w) < 2:
        return float(len(w))
    bigrams = _corpus_bigrams()
    return sum(pair in bigrams for pair in pairwise(w)) / (len(w) - 1)


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _copy_rate(text: str, prompt: str, n: int = 3) -> float:
    summary, article = text.split(), split_prompt(prompt).split()
    if not summary:
        return 0.0
    n = min(n, len(summary))
    grams = set(_ngrams(article, n))
    return float(np.mean([g in grams for g in _ngrams(summary, n)]))


@PromptScorer
def copy_rate(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """Share of each summary's word trigrams (end mark included) that occur in its article, in [0, 1].

    ``1 − copy_rate`` is Ziegler et al.'s "novel n-grams" fraction. A summary shorter than three words
    uses its longest n-grams (a one-word summary: whether its word is in the article); empty: 0.
    """
    return np.array([_copy_rate(t, p) for t, p in zip(texts, prompts, strict=True)], dtype=np.float64)


@PromptScorer
def verbatim(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """1 where a summary is word for word one of its article's sentences (end mark ignored), else 0."""
    out = []
    for t, p in zip(texts, prompts, strict=True):
        bare = [w for w in t.split() if w not in SENTENCE_ENDS]
        out.append(float(any(bare == s[:-1] for s in article_sentences(split_prompt(p)))))
    return np.array(out, dtype=np.float64)


def _support(words: Sequence[str], reference: Sequence[str], *, synonym_credit: float) -> float:
    """Mean credit of ``words``: 1 if the reference has the word, ``synonym_credit`` if only its concept, else 0."""
    ref, ref_concepts = set(reference), {concept(w) for w in reference}
    credit = [1.0 if w in ref else synonym_credit if concept(w) in ref_concepts else 0.0 for w in words]
    return float(np.mean(credit)) if credit else 0.0


def _labeler(text: str, prompt: str, synonym_credit: float, ignore: frozenset[str]) -> tuple[float, float]:
    """(accuracy-and-coverage score, fluency) of one summary; the score is 0 without content words."""
    summary, article = content_words(text, ignore=ignore), content_words(split_prompt(prompt), ignore=ignore)
    if not summary or not article:
        return 0.0, fluency(text)
    precision = _support(summary, article, synonym_credit=synonym_credit)
    coverage = _support(sorted(set(article)), summary, synonym_credit=synonym_credit)
    return (precision + coverage) / 2, fluency(text)


@PromptScorer
def summary_labeler(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """The synthetic summary labeler: accuracy and coverage, checked word by word against the article, in [0, 1].

    With the summary's content words ``S`` (repeats kept) and the article's distinct content words ``A``
    (:func:`~prefrl.text.corpus.content_words`: function words such as ``the``/``my``/``and`` left out;
    verbs and intensifiers count, since a literal checker wants ``seemed`` where the article says
    ``seemed``), a word is credited 1 if the other side has it literally, :data:`SYNONYM_CREDIT` (¼) if only a
    synonym of it (:data:`~prefrl.text.corpus.SYNONYM_GROUPS`), else 0::

        precision = mean credit of S against A      (is every word of the summary true to the article?)
        coverage  = mean credit of A against S      (how much of the article does it tell?)
        score     = fluency × (precision + coverage) / 2

    ``fluency`` (:func:`fluency`) is the share of the summary's word pairs that occur in the corpus, so
    word salad and repetitions lose. An empty summary, or one without content words, scores 0. Like
    Ziegler et al.'s labelers, this one finds a copied word easier to verify than a paraphrased one:
    a verbatim copy of one of two sentences scores about 0.77, a faithful paraphrase about 0.43, a fusion
    of both sentences in other words about 0.52, an unrelated sentence about 0.15.
    """
    return np.array(
        [
            s * f
            for s, f in (_labeler(t, p, SYNONYM_CREDIT, FUNCTION_WORDS) for t, p in zip(texts, prompts, strict=True))
        ]
    )


@PromptScorer
def abstractive_judge(texts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """A held-out judge of summaries that values faithful content *not* copied verbatim, in [0, 1].

    Faithfulness and coverage as the labeler's (:func:`summary_labeler`) but at the level of meaning:
    a synonym counts in full, and linking verbs and intensifiers
    (:data:`~prefrl.text.corpus.LINKING_WORDS`) do not count at all. Copying is discounted by the
    summary's trigram :func:`copy_rate`::

        score = fluency × (precision + coverage) / 2 × (1 − copy_rate / 2)

    A verbatim copy of one of two sentences scores about 0.39, a paraphrase about 0.70, a faithful fusion
    of both sentences in other words about 0.87, an unrelated sentence about 0.18.
    """
    out = []
    for t, p in zip(texts, prompts, strict=True):
        score, flu = _labeler(t, p, 1.0, FUNCTION_WORDS | LINKING_WORDS)
        out.append(score * flu * (1 - _copy_rate(t, p) / 2))
    return np.array(out, dtype=np.float64)


SCORERS: dict[str, Scorer] = {
    "sentiment": vader_sentiment,
    "judge": textblob_polarity,
    "descriptive": descriptiveness,
    "subjective": subjective_words,
    "summary": summary_labeler,
    "abstractive": abstractive_judge,
    "copy": copy_rate,
}


def get_scorer(name: str) -> Scorer:
    """The scorer called ``name``, after scoring one probe text with it, so that a package it needs and
    that is missing stops a run at its start (a :class:`~prefrl.config.ConfigError`), not at its first query."""
    if name not in SCORERS:
        raise ValueError(f"unknown text scorer {name!r}: known scorers are {', '.join(SCORERS)}")
    scorer = SCORERS[name]
    score_texts(scorer, ["fine ."], ["fine ."])
    return scorer


def response_text(response: Sequence[int] | np.ndarray, tokenizer: WordTokenizer) -> str:
    """The words of a response, without ``<eos>`` and padding."""
    return tokenizer.decode(int(t) for t in response if int(t) not in (PAD, EOS))


def reward_fn(scorer: str | Scorer, tokenizer: WordTokenizer) -> Callable[[np.ndarray, np.ndarray], float]:
    """A :class:`~envs.text.TextContinuationEnv` ``reward_fn`` that scores the response with ``scorer``.

    With it, the environment's true reward *is* the text score, and the core oracles and segment
    recorder need nothing text-specific.
    """
    score = get_scorer(scorer) if isinstance(scorer, str) else scorer

    def fn(prompt: np.ndarray, response: np.ndarray) -> float:
        prompts = [tokenizer.decode(prompt)] if reads_prompt(score) else None
        return float(score_texts(score, [response_text(response, tokenizer)], prompts)[0])

    return fn


def text_segment(
    env: TextContinuationEnv,
    prompt: int,
    response: Sequence[int],
    *,
    id: int,
    score: float = 0.0,
    env_id: str = "prefrl/TextContinuation-v0",
    episode: int = 0,
) -> Segment:
    """The segment the core's recorder would cut from answering prompt number ``prompt`` with ``response``.

    ``obs`` is the environment's flattened observation at each step; steps after the response's end are
    absorbing padding (zeros). ``score`` goes on the last real step. ``response`` stops at its first end token.
    """
    T = env.response_length
    obs, _ = env.reset(options={"prompt": prompt})
    obs_rows, actions = [], []
    for token in response:
        obs_rows.append(gym.spaces.flatten(env.observation_space, obs))
        actions.append(int(token))
        obs, _, done, _, _ = env.step(int(token))
        if done:
            break
    else:
        raise ValueError(f"text_segment: response of {len(actions)} tokens ends neither at an end token nor at {T}")
    n = len(actions)
    obs_arr = np.zeros((T, len(obs_rows[0])), dtype=obs_rows[0].dtype)  # (T, obs_dim)
    obs_arr[:n] = obs_rows
    act = np.zeros(T, dtype=np.int64)  # (T,)
    act[:n] = actions
    rewards = np.zeros(T, dtype=np.float32)  # (T,)
    rewards[n - 1] = score
    text = None
    if env.tokenizer is not None:
        text = f"{env.tokenizer.decode(env.prompts[prompt])} | {env.tokenizer.decode(actions)}"
    return Segment(
        id=id, obs=obs_arr, actions=act, true_rewards=rewards, length=n, terminated=True, env_id=env_id,
        episode=episode, start=0, text=text,
    )  # fmt: skip


def with_score(segment: Segment, score: float) -> Segment:
    """The segment with its true reward replaced by ``score`` on its last real step."""
    rewards = np.zeros_like(segment.true_rewards)
    rewards[segment.length - 1] = score
    return dataclasses.replace(segment, true_rewards=rewards)


class TextOracle:
    """Scores each queried response with ``scorer`` and lets a core teacher compare the scores.

    Follows :class:`prefrl.oracles.Oracle`. The answers refer to the queried segments' ids; the
    segments themselves are not changed.

    Args:
        scorer: a name in :data:`SCORERS` (``"sentiment"``, ``"summary"``, ...), a function texts -> scores,
            or a :class:`PromptScorer`.
        tokenizer: decodes the segments' actions (the response tokens).
        teacher: a :class:`~prefrl.oracles.SyntheticOracle`, or the name of a B-Pref teacher
            (``"oracle"``, ``"stoc"``, ``"mistake"``, ``"skip"``, ``"equal"``, ...).
        **knobs: keyword arguments for the named teacher (``beta``, ``epsilon``, ``seed``, ...).
    """

    def __init__(
        self,
        scorer: str | Scorer,
        *,
        tokenizer: WordTokenizer,
        teacher: str | SyntheticOracle = "oracle",
        **knobs: Any,
    ) -> None:
        self.score = get_scorer(scorer) if isinstance(scorer, str) else scorer
        self.tokenizer = tokenizer
        if isinstance(teacher, SyntheticOracle):
            if knobs:
                raise ValueError("TextOracle: pass teacher knobs either in the teacher or as keywords, not both")
            self.teacher = teacher
        else:
            name = scorer if isinstance(scorer, str) else "text"
            self.teacher = make_teacher(teacher, **{"name": f"{name}-{teacher}", **knobs})

    def scores(self, segments: Sequence[Segment]) -> np.ndarray:
        """``(n,)`` score of each segment's response (and of its prompt, for a :class:`PromptScorer`)."""
        texts = [response_text(s.actions[: s.length], self.tokenizer) for s in segments]
        prompts = None
        if reads_prompt(self.score):
            from prefrl.text.reward_model import segment_parts  # torch: only where prompts are read

            prompts = [self.tokenizer.decode(segment_parts(s)[0]) for s in segments]
        return score_texts(self.score, texts, prompts)

    def rescored(self, query: Query) -> Query:
        scores = self.scores(query.segments)
        segs = tuple(with_score(s, float(v)) for s, v in zip(query.segments, scores, strict=True))
        return Query(segments=segs, id=query.id)

    def answer(self, query: Query) -> Comparison:
        """Label one query now (what a simulated labeler in the web labeler does)."""
        return self.teacher.answer(self.rescored(query))

    def submit(self, queries: Sequence[Query]) -> None:
        self.teacher.submit([self.rescored(q) for q in queries])

    def collect(self, timeout: float | None = 0.0) -> list[Comparison]:
        return self.teacher.collect(timeout)

    def pending(self) -> int:
        return self.teacher.pending()

    def close(self) -> None:
        self.teacher.close()
