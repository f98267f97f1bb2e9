"""The shipped text corpus: short English sentences from a small grammar, generated here and committed.

The grammar mixes positive, negative and neutral words, so that a sentiment oracle scores its
continuations across the whole range, and every sentence ends with ``.`` or ``!``. The corpus, its
word vocabulary and the prompts (sentence openings) live in ``envs/data/``, where the text
environment reads them.

Rebuild them with ``python -m prefrl.text.corpus`` (deterministic for a given ``--seed``).

The same grammar writes the *summarize* task (Ziegler et al. 2019's copy-vs-abstract finding in
miniature): an *article* is two short corpus sentences, its prompt is the article followed by the
separator ``tl;dr``, and the response is the summary. :func:`summarize` writes summaries of five kinds
for pretraining a model that sometimes copies and sometimes abstracts: a verbatim copy of the lead or
of the second sentence, a *paraphrase* (every word that has a synonym in :data:`SYNONYM_GROUPS`
replaced by another one), a *fusion* of both sentences' subject and adjective in other words
(``the film seemed great , but the town was dull .``) and an unrelated sentence. ``python -m
prefrl.text.corpus --summarize`` writes the task's prompts and vocabulary (the corpus vocabulary plus
the separator, appended so every other word keeps its id) to ``envs/data/summarize_*``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from envs.text import DATA_DIR, WordTokenizer

SUBJECTS = (
    "the movie", "the film", "the book", "the story", "the song", "the music", "the food", "the meal",
    "the soup", "the coffee", "the weather", "the city", "the town", "the house", "the garden", "the room",
    "the trip", "the game", "the show", "the party", "the teacher", "the doctor", "the dog", "the cat",
    "the car", "the train", "the hotel", "the beach", "the park", "the market", "my friend", "my brother",
    "my sister", "my job", "my day", "our team", "our neighbor", "the class", "the lecture", "the concert",
)  # fmt: skip
POSITIVE = (
    "wonderful", "great", "lovely", "beautiful", "happy", "amazing", "excellent", "good", "nice", "fun",
    "bright", "warm", "kind", "delightful", "brilliant", "pleasant", "charming", "perfect", "fantastic",
    "cheerful", "friendly", "sweet", "calm", "fresh", "clever",
)  # fmt: skip
NEGATIVE = (
    "terrible", "awful", "bad", "sad", "boring", "ugly", "horrible", "dull", "angry", "broken", "poor",
    "painful", "disappointing", "dreadful", "nasty", "miserable", "rude", "dirty", "stupid", "gloomy",
    "annoying", "weak", "lonely", "scary", "worse",
)  # fmt: skip
NEUTRAL = (
    "long", "short", "quiet", "old", "new", "large", "small", "red", "green", "wooden", "busy", "empty",
    "simple", "late", "early", "round", "tall", "narrow", "distant", "ordinary", "full", "plain", "loud",
)  # fmt: skip
ADVERBS = ("very", "really", "quite", "rather", "somewhat", "so", "truly", "a bit", "pretty", "not")
VERBS = ("was", "is", "seemed", "felt", "looked", "sounded")
FEELINGS = ("liked", "loved", "hated", "enjoyed", "remembered", "visited", "watched", "missed", "saw", "found")
TIMES = ("today", "yesterday", "last night", "this morning", "again", "on sunday", "at last", "in the end")
PEOPLE = ("i", "we", "they", "she", "he", "my mother", "everyone", "nobody")
EMOTIONS = ("happy", "sad", "tired", "hopeful", "angry", "calm", "proud", "worried", "glad", "upset")
ENDS = (".", ".", ".", "!")


def _adjective(rng: np.random.Generator) -> str:
    group = (POSITIVE, NEGATIVE, NEUTRAL)[int(rng.integers(3))]
    return str(rng.choice(group))


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return str(words[int(rng.integers(len(words)))])


def _templates() -> list[Callable[[np.random.Generator], str]]:
    a, p = _adjective, _pick
    return [
        lambda r: f"{p(r, SUBJECTS)} {p(r, VERBS)} {a(r)}",
        lambda r: f"{p(r, SUBJECTS)} {p(r, VERBS)} {p(r, ADVERBS)} {a(r)}",
        lambda r: f"{p(r, SUBJECTS)} {p(r, VERBS)} {a(r)} and {a(r)}",
        lambda r: f"{p(r, SUBJECTS)} {p(r, VERBS)} {a(r)} , but {p(r, SUBJECTS)} {p(r, VERBS)} {a(r)}",
        lambda r: f"{p(r, PEOPLE)} {p(r, FEELINGS)} {p(r, SUBJECTS)} {p(r, TIMES)} and it was {a(r)}",
        lambda r: f"{p(r, PEOPLE)} said that {p(r, SUBJECTS)} {p(r, VERBS)} {p(r, ADVERBS)} {a(r)}",
        lambda r: f"{p(r, TIMES)} {p(r, SUBJECTS)} made me feel {p(r, EMOTIONS)}",
        lambda r: f"{p(r, SUBJECTS)} {p(r, VERBS)} {a(r)} {p(r, TIMES)}",
        lambda r: f"i think {p(r, SUBJECTS)} {p(r, VERBS)} {p(r, ADVERBS)} {a(r)}",
    ]


def generate_sentences(n: int, *, rng: np.random.Generator) -> list[str]:
    """``n`` sentences, each of whitespace-separated lowercase words ending in ``.`` or ``!``."""
    templates = _templates()
    return [f"{templates[int(rng.integers(len(templates)))](rng)} {_pick(rng, ENDS)}" for _ in range(n)]


def prompts_from(sentences: list[str], *, words: int = 3) -> list[str]:
    """Distinct sentence openings of ``words`` words (none of which ends a sentence), sorted."""
    out = set()
    for s in sentences:
        w = s.split()
        if len(w) > words + 1:
            out.add(" ".join(w[:words]))
    return sorted(out)


def build(out_dir: Path, *, n: int = 6000, seed: int = 0) -> dict[str, int]:
    """Write ``corpus.txt``, ``vocab.json`` and ``prompts.txt`` to ``out_dir``; return their sizes."""
    rng = np.random.default_rng(seed)
    sentences = generate_sentences(n, rng=rng)
    prompts = prompts_from(sentences)
    tok = WordTokenizer.from_texts(sentences)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "corpus.txt").write_text("\n".join(sentences) + "\n")
    (out_dir / "prompts.txt").write_text("\n".join(prompts) + "\n")
    tok.save(out_dir / "vocab.json")
    return {"sentences": len(sentences), "prompts": len(prompts), "vocab": tok.vocab_size}


# -- the summarize task -------------------------------------------------------------------------
SEPARATOR = "tl;dr"
"""Ends an article in a summarize prompt: the response after it is the summary."""
SUMMARIZE_ARTICLES = 600
SUMMARIZE_SEED = 1
"""The shipped summarize prompts: this many articles from this seed (pretraining uses other seeds)."""
ARTICLE_WORDS = 8
"""Most tokens (end mark included) of an article sentence: two of them, the separator and a 14-token
summary fit the tiny GPT's 32-token context."""
ADJECTIVES = frozenset(POSITIVE + NEGATIVE + NEUTRAL)
SYNONYM_GROUPS: tuple[tuple[str, ...], ...] = (
    ("movie", "film", "show"), ("book", "story"), ("song", "music", "concert"), ("food", "meal"),
    ("city", "town"), ("class", "lecture"), ("liked", "loved", "enjoyed"), ("watched", "saw"),
    (*POSITIVE, "glad"), (*NEGATIVE, "upset"), ("very", "really", "truly", "so"),
    ("quite", "rather", "pretty", "somewhat"), VERBS,
)  # fmt: skip
"""Words a paraphrase may swap for one another. Within the grammar they mean the same at the grain a
summary cares about (every positive adjective praises, every negative one blames); a word in no group
has no synonym and a paraphrase keeps it."""
CONCEPT = {w: group[0] for group in SYNONYM_GROUPS for w in group}
"""Word -> the first word of its synonym group: two words say the same thing when their concepts agree."""
FUNCTION_WORDS = frozenset(
    ("the", "my", "our", "a", "i", "we", "they", "she", "he", "me", "it", "and", "but", "that", "this", "said",
     "think", "made", "feel", "bit", "on", "at", "in")
)  # fmt: skip
"""Words no summary is judged on (determiners, pronouns, conjunctions, prepositions)."""
LINKING_WORDS = frozenset((*VERBS, "very", "really", "quite", "rather", "somewhat", "so", "truly", "pretty"))
"""Linking verbs and intensifiers: a literal checker wants them right (``seemed`` is not ``was``), a judge of
meaning does not care (``not`` is neither kind of word: it turns a sentence around)."""
SUMMARY_MIX = (("lead", 0.45), ("second", 0.15), ("paraphrase", 0.15), ("fusion", 0.15), ("unrelated", 0.1))
"""Kinds of pretraining summaries and their shares: 60 % copies, 30 % abstractions, 10 % unfaithful. ρ learns
the copies imperfectly: it writes one of the article's sentences word for word about a third of the time."""


def concept(word: str) -> str:
    return CONCEPT.get(word, word)


def content_words(text: str, *, ignore: frozenset[str] = FUNCTION_WORDS) -> list[str]:
    """The words of ``text`` a summary is judged on: alphabetic, not in ``ignore`` (in order, repeats kept)."""
    return [w for w in text.split() if w.isalpha() and w not in ignore]


def split_prompt(prompt: str) -> str:
    """The article of a summarize prompt: the words before its last separator (the whole prompt without one)."""
    words = prompt.split()
    if SEPARATOR in words:
        words = words[: len(words) - 1 - words[::-1].index(SEPARATOR)]
    return " ".join(words)


def article_sentences(article: str) -> list[list[str]]:
    """The article's sentences as word lists, each with its end mark."""
    out: list[list[str]] = [[]]
    for w in article.split():
        out[-1].append(w)
        if w in (".", "!", "?"):
            out.append([])
    return [s for s in out if s]


def generate_articles(n: int, *, rng: np.random.Generator, sentences: int = 2) -> list[list[str]]:
    """``n`` articles, each ``sentences`` corpus sentences of at most :data:`ARTICLE_WORDS` tokens."""
    templates = _templates()
    out: list[list[str]] = []
    article: list[str] = []
    while len(out) < n:
        s = f"{templates[int(rng.integers(len(templates)))](rng)} {_pick(rng, ENDS)}"
        if len(s.split()) <= ARTICLE_WORDS:
            article.append(s)
        if len(article) == sentences:
            out.append(article)
            article = []
    return out


def article_prompt(article: list[str]) -> str:
    """The prompt of an article: its sentences, then the separator."""
    return " ".join([*article, SEPARATOR])


def _synonym(word: str, rng: np.random.Generator) -> str:
    for group in SYNONYM_GROUPS:
        if word in group:
            return _pick(rng, tuple(w for w in group if w != word))
    return word


def paraphrase(sentence: str, *, rng: np.random.Generator) -> str:
    """``sentence`` with every word that has synonyms replaced by another word of its group."""
    return " ".join(_synonym(w, rng) for w in sentence.split())


def gist(sentence: str) -> tuple[str, str] | None:
    """A sentence's first subject (``the movie``) and the adjective said of it (``great``, ``not great``), or None."""
    w = sentence.split()
    if "made" in w:  # "... made me feel happy": the feeling is not said of the subject
        return None
    for i in range(len(w) - 1):
        if f"{w[i]} {w[i + 1]}" in SUBJECTS:
            for j in range(i + 2, len(w)):
                if w[j] in ADJECTIVES:
                    return f"{w[i]} {w[i + 1]}", f"not {w[j]}" if w[j - 1] == "not" else w[j]
            return None
    return None


def summarize(article: list[str], kind: str, *, rng: np.random.Generator) -> str:
    """A summary of ``article`` of one of the :data:`SUMMARY_MIX` kinds (a fusion falls back to a paraphrase)."""
    if kind == "lead":
        return article[0]
    if kind == "second":
        return article[-1]
    if kind == "fusion":
        gists = [gist(s) for s in article[:2]]
        if all(gists):
            parts = [
                f"{paraphrase(subj, rng=rng)} {_pick(rng, VERBS)} {paraphrase(adj, rng=rng)}" for subj, adj in gists
            ]
            return f"{parts[0]} , but {parts[1]} ."
        kind = "paraphrase"
    if kind == "paraphrase":
        return paraphrase(article[int(rng.integers(len(article)))], rng=rng)
    if kind == "unrelated":
        return generate_articles(1, rng=rng, sentences=1)[0][0]
    raise ValueError(f"unknown summary kind {kind!r}: use one of {', '.join(k for k, _ in SUMMARY_MIX)}")


def summary_examples(n: int, *, rng: np.random.Generator) -> list[str]:
    """``n`` pretraining texts ``article tl;dr summary``, summary kinds drawn by :data:`SUMMARY_MIX`."""
    kinds = [k for k, _ in SUMMARY_MIX]
    shares = np.array([p for _, p in SUMMARY_MIX])
    out = []
    for article in generate_articles(n, rng=rng):
        kind = kinds[int(rng.choice(len(kinds), p=shares / shares.sum()))]
        out.append(f"{article_prompt(article)} {summarize(article, kind, rng=rng)}")
    return out


def summarize_tokenizer(base: WordTokenizer | None = None) -> WordTokenizer:
    """The corpus vocabulary with the separator appended (every other word keeps its id)."""
    base = base or WordTokenizer.load()
    return WordTokenizer([*base.words, SEPARATOR]) if SEPARATOR not in base.ids else base


def build_summarize(out_dir: Path, *, n: int = SUMMARIZE_ARTICLES, seed: int = SUMMARIZE_SEED) -> dict[str, int]:
    """Write ``summarize_prompts.txt`` (``n`` article prompts) and ``summarize_vocab.json`` to ``out_dir``."""
    prompts = [article_prompt(a) for a in generate_articles(n, rng=np.random.default_rng(seed))]
    tok = summarize_tokenizer()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summarize_prompts.txt").write_text("\n".join(prompts) + "\n")
    tok.save(out_dir / "summarize_vocab.json")
    return {"articles": len(prompts), "vocab": tok.vocab_size}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the shipped text corpus, vocabulary and prompts.")
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output directory")
    ap.add_argument("--sentences", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=None, help=f"default 0 (--summarize: {SUMMARIZE_SEED})")
    ap.add_argument(
        "--summarize", action="store_true", help="write the summarize task's prompts and vocabulary instead"
    )
    ap.add_argument("--articles", type=int, default=SUMMARIZE_ARTICLES, help="--summarize: articles to write")
    args = ap.parse_args(argv)
    if args.summarize:
        sizes = build_summarize(args.out, n=args.articles, seed=SUMMARIZE_SEED if args.seed is None else args.seed)
    else:
        sizes = build(args.out, n=args.sentences, seed=args.seed or 0)
    print(" ".join(f"{k}={v}" for k, v in sizes.items()), "->", args.out)


if __name__ == "__main__":
    main()
