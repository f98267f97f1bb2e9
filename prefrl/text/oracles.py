"""Synthetic text oracles: sentiment (VADER), a held-out judge (TextBlob polarity), descriptiveness.

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import gymnasium as gym
import numpy as np

from envs.text import EOS, PAD, TextContinuationEnv, WordTokenizer
from prefrl.data import Comparison, Query, Segment
from prefrl.oracles import SyntheticOracle, make_teacher

Scorer = Callable[[Sequence[str]], np.ndarray]
"""Texts -> ``(n,)`` float scores, higher is better."""

_INSTALL = "install the text extra: pip install 'prefrl[text]'"


@cache
def _vader() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ImportError(f"the sentiment oracle needs vaderSentiment; {_INSTALL}") from None
    return SentimentIntensityAnalyzer()


def vader_sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER compound sentiment in [-1, 1] of each text."""
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


@cache
def _pattern(kind: str) -> Any:
    """TextBlob's pattern analyzer or tagger: both ship their lexicons (TextBlob's NLTK parts would need downloads)."""
    try:
        from textblob.en.sentiments import PatternAnalyzer
        from textblob.en.taggers import PatternTagger
    except ImportError:
        raise ImportError(f"the judge and descriptiveness oracles need textblob; {_INSTALL}") from None
    return PatternAnalyzer() if kind == "analyzer" else PatternTagger()


def textblob_polarity(texts: Sequence[str]) -> np.ndarray:
    """TextBlob's pattern-analyzer polarity in [-1, 1] of each text (the held-out judge)."""
    analyzer = _pattern("analyzer")
    return np.array([analyzer.analyze(t).polarity for t in texts], dtype=np.float64)


def descriptiveness(texts: Sequence[str]) -> np.ndarray:
    """Fraction of a text's words that are adjectives or adverbs (pattern tagger), in [0, 1]; 0 for no words."""
    tagger = _pattern("tagger")
    out = []
    for t in texts:
        tags = [tag for word, tag in tagger.tag(t) if any(c.isalnum() for c in word)]
        out.append(sum(tag.startswith(("JJ", "RB")) for tag in tags) / len(tags) if tags else 0.0)
    return np.array(out, dtype=np.float64)


SCORERS: dict[str, Scorer] = {
    "sentiment": vader_sentiment,
    "judge": textblob_polarity,
    "descriptive": descriptiveness,
}


def get_scorer(name: str) -> Scorer:
    if name not in SCORERS:
        raise ValueError(f"unknown text scorer {name!r}: known scorers are {', '.join(SCORERS)}")
    return SCORERS[name]


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
        return float(score([response_text(response, tokenizer)])[0])

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
        scorer: ``"sentiment"``, ``"judge"``, ``"descriptive"`` or a function texts -> scores.
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
        """``(n,)`` score of each segment's response."""
        return self.score([response_text(s.actions[: s.length], self.tokenizer) for s in segments])

    def rescored(self, query: Query) -> Query:
        scores = self.scores(query.segments)
        segs = tuple(with_score(s, float(v)) for s, v in zip(query.segments, scores, strict=True))
        return Query(segments=segs, id=query.id)

    def submit(self, queries: Sequence[Query]) -> None:
        self.teacher.submit([self.rescored(q) for q in queries])

    def collect(self, timeout: float | None = 0.0) -> list[Comparison]:
        return self.teacher.collect(timeout)

    def pending(self) -> int:
        return self.teacher.pending()

    def close(self) -> None:
        self.teacher.close()
