"""Preference learning on text: the shipped corpus, a tiny GPT, and synthetic text oracles.

- :mod:`prefrl.text.corpus` builds the shipped sentences, vocabulary and prompts (``envs/data/``).
- :mod:`prefrl.text.model` is a tiny causal transformer with a KV cache for batched generation;
  :mod:`prefrl.text.pretrain` pretrains it on the corpus (``python -m prefrl.text.pretrain``).
- :mod:`prefrl.text.oracles` scores responses (VADER sentiment, a TextBlob held-out judge) and
  answers pair and best-of-k queries through the core's teachers.

The environment itself is :class:`envs.text.TextContinuationEnv` (``prefrl/TextContinuation-v0``).
"""
