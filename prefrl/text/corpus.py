"""The shipped text corpus: short English sentences from a small grammar, generated here and committed.

The grammar mixes positive, negative and neutral words, so that a sentiment oracle scores its
continuations across the whole range, and every sentence ends with ``.`` or ``!``. The corpus, its
word vocabulary and the prompts (sentence openings) live in ``envs/data/``, where the text
environment reads them.

Rebuild them with ``python -m prefrl.text.corpus`` (deterministic for a given ``--seed``).
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the shipped text corpus, vocabulary and prompts.")
    ap.add_argument("--out", type=Path, default=DATA_DIR, help="output directory")
    ap.add_argument("--sentences", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    sizes = build(args.out, n=args.sentences, seed=args.seed)
    print(" ".join(f"{k}={v}" for k, v in sizes.items()), "->", args.out)


if __name__ == "__main__":
    main()
