"""Text continuation: an agent writes a response to a prompt, one token at a time.

The observation is a dict of a fixed-size token array and the response length so far::

    tokens: (prompt_length + response_length,) int64  [pad .. pad, prompt ..., response ..., pad ...]
    length: (1,) int64                                  response tokens written so far

The prompt is left-padded to ``prompt_length`` so the response always starts at the same index.
The action is the next token id (``Discrete(vocab_size)``). The episode ends (``terminated``) at the
first end token (a sentence end such as ``.``, or ``<eos>``) or when ``response_length`` tokens are
written: a response is complete then, and nothing follows, so it is not a time-limit truncation.

Reward comes only at the end: ``reward_fn(prompt_ids, response_ids)`` if one is given (0 otherwise),
plus ``no_end_penalty`` if the response never reached an end token (Ziegler et al. 2019 penalized
continuations without a period the same way). ``info`` at the last step holds the ``response``
token ids and whether it ``ended`` properly.

Prompts and vocabulary default to the corpus shipped in ``envs/data/``; pass ``prompts`` (token id
lists) and ``vocab_size`` for a toy instance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

DATA_DIR = Path(__file__).parent / "data"
SPECIALS = ("<pad>", "<eos>", "<unk>")
PAD, EOS, UNK = 0, 1, 2
SENTENCE_ENDS = (".", "!", "?")

RewardFn = Callable[[np.ndarray, np.ndarray], float]
"""``(prompt_ids, response_ids) -> float``; both are 1-D int arrays without padding."""


class WordTokenizer:
    """Whitespace word-level tokenizer over a fixed vocabulary; ids 0, 1, 2 are ``<pad>``, ``<eos>``, ``<unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIALS}, got {words[:3]}")
        if len(set(words)) != len(words):
            raise ValueError("a vocabulary must not repeat a word")
        self.words = words
        self.ids = {w: i for i, w in enumerate(words)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        """Vocabulary of every word in ``texts``, sorted, after the special tokens."""
        seen = {w for t in texts for w in t.split()}
        return cls([*SPECIALS, *sorted(seen - set(SPECIALS))])

    @classmethod
    def load(cls, path: str | Path = DATA_DIR / "vocab.json") -> WordTokenizer:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(
                f"{path}: not a readable vocabulary file ({e}); rebuild it with the corpus builder"
            ) from None
        return cls(data["words"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, indent=0) + "\n")

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Ids that end a response: ``<eos>`` and the sentence ends in the vocabulary."""
        return (EOS, *(self.ids[w] for w in SENTENCE_ENDS if w in self.ids))

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, UNK) for w in text.split()]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[int(i)] for i in ids if int(i) != PAD)


def load_prompts(tokenizer: WordTokenizer, path: str | Path = DATA_DIR / "prompts.txt") -> list[list[int]]:
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    return [tokenizer.encode(line) for line in lines if line]


class TextContinuationEnv(gym.Env):
    """Continue a prompt with up to ``response_length`` tokens (see the module docstring).

    Args:
        prompts: token id lists; default: the shipped prompts.
        vocab_size: size of the action space; default: the shipped vocabulary's.
        end_tokens: ids that end a response; default: ``<eos>`` and the sentence ends.
        prompt_length: room for the prompt (longer prompts keep their last tokens); default: the longest prompt.
        response_length: most tokens in a response.
        reward_fn: ``(prompt_ids, response_ids) -> float`` paid at the end; ``None`` pays 0.
        no_end_penalty: added to the final reward when no end token was written.
        tokenizer: for ``render``; default: the shipped one when ``prompts`` is not given.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        *,
        prompts: Sequence[Sequence[int]] | None = None,
        vocab_size: int | None = None,
        end_tokens: Sequence[int] | None = None,
        prompt_length: int | None = None,
        response_length: int = 24,
        reward_fn: RewardFn | None = None,
        no_end_penalty: float = -1.0,
        tokenizer: WordTokenizer | None = None,
        render_mode: str | None = None,
    ) -> None:
        if prompts is None:
            tokenizer = tokenizer or WordTokenizer.load()
            prompts = load_prompts(tokenizer)
        if vocab_size is None:
            if tokenizer is None:
                raise ValueError("TextContinuationEnv: pass vocab_size (or a tokenizer) together with prompts")
            vocab_size = tokenizer.vocab_size
        if end_tokens is None:
            end_tokens = tokenizer.end_ids if tokenizer is not None else (EOS,)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("TextContinuationEnv: prompts must be a non-empty list of non-empty token id lists")
        if response_length < 1:
            raise ValueError(f"TextContinuationEnv: response_length must be >= 1, got {response_length}")
        if any(not 0 < t < vocab_size for p in prompts for t in p):
            raise ValueError(f"TextContinuationEnv: prompt token ids must be in 1..{vocab_size - 1} (0 is padding)")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"TextContinuationEnv: render_mode {render_mode!r} is not supported; use 'ansi' or None")
        self.prompt_length = int(prompt_length or max(len(p) for p in prompts))
        self.response_length = int(response_length)
        self.prompts = [np.asarray(p[-self.prompt_length :], dtype=np.int64) for p in prompts]
        self.vocab_size = int(vocab_size)
        self.end_tokens = frozenset(int(t) for t in end_tokens)
        self.reward_fn = reward_fn
        self.no_end_penalty = float(no_end_penalty)
        self.tokenizer = tokenizer
        self.render_mode = render_mode

        n = self.prompt_length + self.response_length
        self.observation_space = gym.spaces.Dict(
            {
                "tokens": gym.spaces.Box(0, self.vocab_size - 1, shape=(n,), dtype=np.int64),
                "length": gym.spaces.Box(0, self.response_length, shape=(1,), dtype=np.int64),
            }
        )
        self.action_space = gym.spaces.Discrete(self.vocab_size)
        self._tokens = np.zeros(n, dtype=np.int64)  # (P + R,)
        self._prompt = self.prompts[0]
        self._length = 0
        self._done = True

    def _obs(self) -> dict[str, np.ndarray]:
        return {"tokens": self._tokens.copy(), "length": np.array([self._length], dtype=np.int64)}

    @property
    def response(self) -> np.ndarray:
        """``(length,)`` token ids written so far."""
        return self._tokens[self.prompt_length : self.prompt_length + self._length].copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start a response to a random prompt, or to ``options["prompt"]`` (an index into ``prompts``)."""
        super().reset(seed=seed)
        if options and "prompt" in options:
            index = int(options["prompt"])
        else:
            index = int(self.np_random.integers(len(self.prompts)))
        self._prompt = self.prompts[index]
        self._tokens[:] = 0
        self._tokens[self.prompt_length - len(self._prompt) : self.prompt_length] = self._prompt
        self._length = 0
        self._done = False
        return self._obs(), {"prompt_index": index}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("TextContinuationEnv: step() after the response ended; call reset() first")
        token = int(action)
        if not 0 <= token < self.vocab_size:
            raise ValueError(f"TextContinuationEnv: action {token} is not a token id in 0..{self.vocab_size - 1}")
        self._tokens[self.prompt_length + self._length] = token
        self._length += 1
        ended = token in self.end_tokens
        self._done = ended or self._length == self.response_length
        reward, info = 0.0, {}
        if self._done:
            response = self.response
            if self.reward_fn is not None:
                reward += float(self.reward_fn(self._prompt.copy(), response))
            if not ended:
                reward += self.no_end_penalty
            info = {"response": response, "ended": ended}
        return self._obs(), reward, self._done, False, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self.tokenizer is None:
            return f"{self._prompt.tolist()} | {self.response.tolist()}"
        return f"{self.tokenizer.decode(self._prompt)} | {self.tokenizer.decode(self.response)}"
