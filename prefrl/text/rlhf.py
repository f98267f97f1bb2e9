"""Finetune a language model from preferences: the text counterpart of :mod:`prefrl.loop`.

One run, in the order of Ziegler et al. (2019)::

    ρ = load_lm(model); π = copy of ρ; reward model = copy of ρ + K heads, normalized on ρ's samples
    offline:  sample k responses per prompt from ρ → ask the oracle → fit the reward model
    repeat ppo_steps times:
        TextPPO.step (generate with π, score with the reward model, KL penalty to ρ, PPO update)
        every so often (online labels): sample from π → ask → fit again (Ziegler's step 4)
        every eval_every steps: on held-out prompts, the oracle's score, the held-out judge's score, the
        reward model's score and KL(π‖ρ) — the over-optimization curve
        checkpoint

The comparisons are the core's: text responses become :class:`~prefrl.data.Segment`\\ s (as the core's
recorder would cut them from ``prefrl/TextContinuation-v0``), queries of ``k`` responses to the same
prompt are chosen with the core's samplers (:func:`prefrl.segments.select_queries`: uniform,
disagreement, entropy), answered by a :class:`~prefrl.text.oracles.TextOracle` with the core's B-Pref
teacher knobs, and stored in the run's ``labels.sqlite`` (:class:`~prefrl.data.ComparisonStore`).
``reward_source = "oracle"`` trains on the oracle's score directly: the upper line to compare against.

A run directory holds ``config.toml``, ``metrics.csv`` (one row per PPO step; ``eval/*`` columns on
evaluation steps), ``labels.sqlite``, ``samples.csv`` (held-out responses at every evaluation),
``checkpoint/`` (policy, reward model, β, random states) and ``plots/``. A killed run resumes from its
last checkpoint with every label it had already paid for.

The summarize task (``experiments/text_summarize_tiny.toml``) is a run like any other: its prompts are
articles ending in ``tl;dr`` (``prompts = "summarize_prompts.txt"``, shipped in ``envs/data/``), its ρ the
tiny GPT pretrained to summarize (``model = "tiny-summarize"``), its labeler and judge read the article
(``summary`` and ``abstractive``, :mod:`prefrl.text.oracles`), and each evaluation also logs how much
π and ρ copy from the article (``eval/copy``, ``eval/verbatim``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from envs.text import DATA_DIR, EOS, TextContinuationEnv, WordTokenizer
from prefrl.config import ConfigError, merge_layer, parse_override, toml_safe
from prefrl.data import Comparison, ComparisonStore, Segment
from prefrl.io import atomic_write, atomic_write_text
from prefrl.run import MetricsLog, restore_rng, rng_state, training_lock
from prefrl.segments import select_queries
from prefrl.text.lm import TINY_MODELS, LanguageModel, Rollout, load_lm
from prefrl.text.oracles import (
    SCORERS,
    TextOracle,
    copy_rate,
    get_scorer,
    reads_prompt,
    score_texts,
    text_segment,
    verbatim,
)
from prefrl.text.ppo import PPOConfig, TextPPO
from prefrl.text.reward_model import POOLS, TextRewardModel, TextRewardTrainer

ENV_ID = "prefrl/TextContinuation-v0"


@dataclass
class TextLabelConfig:
    offline: int = 200
    """Labels on ρ's samples before RL (Ziegler's offline collection)."""
    online: int = 0
    """Labels on π's samples during RL, asked in ``rounds`` equal rounds (0 = offline only)."""
    rounds: int = 4
    """Online label rounds, spread evenly over the PPO steps."""
    k: int = 2
    """Responses per query: 2 = pairs, 4 = best-of-4 (Ziegler et al.)."""
    sampler: str = "uniform"
    """``uniform``, ``disagreement`` or ``entropy`` (the core's samplers, over the reward heads)."""
    candidates: int = 4
    """Disagreement/entropy: candidate queries drawn per query asked."""


@dataclass
class TextOracleConfig:
    kind: str = "synthetic"
    """``synthetic`` (``scorer`` answers) or ``human`` (people answer in the web labeler; ``prefrl train
    --oracle human``, or ``--simulate-labeler`` to have ``scorer`` answer through the labeler's HTTP API)."""
    scorer: str = "sentiment"
    """What the synthetic labeler rewards: ``sentiment`` (VADER), ``descriptive``, ``judge``, ``subjective``;
    for summaries ``summary`` (accuracy and coverage against the article) or ``copy``."""
    judge: str = "judge"
    """Held-out judge, never trained on (TextBlob polarity; ``subjective`` for descriptiveness, ``abstractive``
    for summaries): tells real gains from over-optimization."""
    teacher: str = "oracle"
    """B-Pref teacher preset: oracle, stoc, mistake, noisy, skip, myopic, equal."""
    beta: float = math.inf
    """Teacher rationality: answers follow a Bradley–Terry choice at this inverse temperature (inf: always the best)."""
    epsilon: float = 0.0
    """Probability that the teacher answers at random."""
    skip_threshold: float = -math.inf
    """The teacher skips a query whose best score is below this (relative to the mean |score|); -inf never skips."""
    equal_threshold: float = 0.0
    """The teacher calls scores this close (relative) equally good."""


@dataclass
class TextRewardConfig:
    heads: int = 3
    """Ensemble size: scalar heads on one backbone (disagreement sampling reads their spread)."""
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    """0 freezes the backbone (cheap for large models)."""
    epochs: int = 4
    """Passes over the comparisons at each fit."""
    batch_size: int = 32
    epsilon: float = 0.1
    """The loss's ε-mixture for label noise."""
    l2: float = 1e-3
    val_fraction: float = 1 / math.e
    """Share of the comparisons held out of training to measure ``reward/val_acc`` (the core's 1/e by default;
    every held-out label is one the reward model does not learn from, so a small budget wants a small share)."""
    norm_samples: int = 256
    """ρ's samples the reward is normalized on (mean 0, std 1), before and after each fit."""
    pool: str = "last"
    """What the heads read: ``last`` (the hidden state at the last token, as Ziegler et al.) or ``mean`` (the
    mean over the response's tokens: learns relations between response and prompt, as in summaries, faster)."""


@dataclass
class TextConfig:
    kind: str = "text"
    """Marks a text experiment file (``prefrl train`` dispatches on it)."""
    name: str = "text"
    task: str = "continue the text in a positive, happy way"
    """What the labelers should reward, in one sentence (shown to people)."""
    model: str = "tiny"
    """``tiny``, ``tiny-summarize``, ``smollm2``, or a path to a Hugging Face causal-LM directory (see
    :func:`prefrl.text.lm.load_lm`)."""
    prompts: str = ""
    """A text file of prompts, one per line, or the name of one shipped in ``envs/data/``
    (``summarize_prompts.txt``); empty: the shipped prompts."""
    reward_source: str = "learned"
    """``learned`` (from comparisons) or ``oracle`` (the oracle's score itself: the upper baseline)."""
    ppo_steps: int = 60
    eval_every: int = 5
    """Evaluate on the held-out prompts every this many PPO steps (and at the start and end)."""
    eval_prompts: int = 64
    """Prompts held out of training and labeling, for evaluation."""
    seed: int = 0
    threads: int = 0
    """torch threads; 0 picks: 1 for the tiny GPT (its matrices are too small to split: more threads run
    several times slower), torch's default otherwise."""
    labels: TextLabelConfig = field(default_factory=TextLabelConfig)
    oracle: TextOracleConfig = field(default_factory=TextOracleConfig)
    reward: TextRewardConfig = field(default_factory=TextRewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    overrides: list[str] = field(default_factory=list)
    """Internal: which keys were set explicitly (filled by the loader)."""


def is_text_config(path: str | Path) -> bool:
    """Whether an experiment file is a text experiment (``kind = "text"`` at its top)."""
    try:
        return tomllib.loads(Path(path).read_text()).get("kind") == "text"
    except (OSError, tomllib.TOMLDecodeError):
        return False


def load_text_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TextConfig:
    """Defaults ← TOML file ← ``--set`` overrides, checked (one clear :class:`ConfigError` per problem)."""
    cfg = TextConfig()
    layers: list[dict[str, Any]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such experiment file '{path}'")
        try:
            layers.append(tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {path} is not valid TOML ({e})") from None
    layers.extend(parse_override(o) for o in overrides)
    explicit: list[str] = []
    if layers and "overrides" in layers[0]:  # a saved config.toml: the keys its run set explicitly
        explicit += list(layers[0].pop("overrides"))
    for layer in layers:
        merge_layer(cfg, layer, "", explicit)
    cfg.overrides = sorted(set(explicit) | set(cfg.overrides))
    check_text_config(cfg)
    return cfg


def check_text_config(cfg: TextConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            obj: Any = cfg
            for part in key.split("."):
                obj = getattr(obj, part)
            raise ConfigError(f"config: {key} = {obj!r} {what}")

    need(cfg.kind == "text", "kind", "must be 'text' in a text experiment")
    need(cfg.reward_source in ("learned", "oracle"), "reward_source", "must be 'learned' or 'oracle'")
    need(cfg.oracle.kind in ("synthetic", "human"), "oracle.kind", "must be 'synthetic' or 'human'")
    need(cfg.ppo_steps >= 1, "ppo_steps", "must be >= 1")
    need(cfg.eval_every >= 1, "eval_every", "must be >= 1")
    need(cfg.eval_prompts >= 1, "eval_prompts", "must be >= 1")
    need(cfg.threads >= 0, "threads", "must be >= 0 (0 = pick)")
    need(cfg.labels.k >= 2, "labels.k", "must be >= 2 (2 = pairs, 4 = best-of-4)")
    need(cfg.labels.offline >= 0 and cfg.labels.online >= 0, "labels.offline", "and labels.online must be >= 0")
    need(cfg.labels.rounds >= 1, "labels.rounds", "must be >= 1")
    need(cfg.labels.candidates >= 1, "labels.candidates", "must be >= 1")
    need(
        cfg.labels.sampler in ("uniform", "disagreement", "entropy"),
        "labels.sampler",
        "must be uniform, disagreement or entropy",
    )
    if cfg.reward_source == "learned":
        need(cfg.labels.offline + cfg.labels.online >= 2, "labels.offline", "+ labels.online must be >= 2")
    for key in ("oracle.scorer", "oracle.judge"):
        name = getattr(cfg.oracle, key.split(".")[1])
        need(name in SCORERS, key, f"is not a text scorer; use one of {', '.join(SCORERS)}")
    need(cfg.reward.heads >= 1, "reward.heads", "must be >= 1")
    need(cfg.reward.epochs >= 1, "reward.epochs", "must be >= 1")
    need(0.0 <= cfg.reward.val_fraction < 1.0, "reward.val_fraction", "must be in [0, 1)")
    need(cfg.reward.norm_samples >= 2, "reward.norm_samples", "must be >= 2")
    need(cfg.reward.pool in POOLS, "reward.pool", f"must be one of {', '.join(POOLS)}")
    cfg.ppo.validate()


def save_text_config(cfg: TextConfig, path: Path) -> None:
    path.write_text(tomli_w.dumps(toml_safe(dataclasses.asdict(cfg))))


def load_prompt_texts(path: str | Path = "") -> list[str]:
    """Prompts, one per line (blank lines dropped); the shipped ones by default.

    A relative path that is not a file here names a file shipped in ``envs/data/`` (``summarize_prompts.txt``).
    """
    p = Path(path) if path else DATA_DIR / "prompts.txt"
    if not p.is_file() and not p.is_absolute() and (DATA_DIR / p).is_file():
        p = DATA_DIR / p
    if not p.is_file():
        shipped = ", ".join(sorted(f.name for f in DATA_DIR.glob("*prompts.txt")))
        raise ConfigError(
            f"config: prompts = '{path}' is not a file; give a text file with one prompt per line "
            f"(or a shipped one: {shipped})"
        )
    texts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not texts:
        raise ConfigError(f"config: prompts file '{p}' holds no prompts")
    return texts


class Responses:
    """Turns sampled responses into core segments and texts, for one model's tokenizer and prompt set."""

    def __init__(self, model: LanguageModel, prompts: list[list[int]], response_length: int) -> None:
        self.tokenizer = model.tokenizer
        self.prompts = prompts
        self.index = {tuple(p): i for i, p in enumerate(prompts)}
        self.env = TextContinuationEnv(
            prompts=prompts,
            vocab_size=self.tokenizer.vocab_size,
            end_tokens=self.tokenizer.end_ids,
            response_length=response_length,
            tokenizer=self.tokenizer,
        )

    def prompt_texts(self, rollout: Rollout) -> list[str]:
        """The words of each prompt."""
        return [self.tokenizer.decode(p) for p in rollout.prompts()]

    def texts(self, rollout: Rollout) -> list[str]:
        """The words of each response (end-of-text and padding dropped, sentence ends kept)."""
        drop = {int(self.tokenizer.pad_id)}
        if isinstance(self.tokenizer, WordTokenizer):
            drop.add(EOS)
        return [self.tokenizer.decode([t for t in r if t not in drop]) for r in rollout.responses()]

    def segments(self, rollout: Rollout, first_id: int) -> list[Segment]:
        """One terminated segment per response, ids from ``first_id``."""
        out = []
        for i, (prompt, response) in enumerate(zip(rollout.prompts(), rollout.responses(), strict=True)):
            out.append(text_segment(self.env, self.index[tuple(prompt)], response, id=first_id + i, env_id=ENV_ID))
        return out


def _generate(model: LanguageModel, prompts: list[list[int]], cfg: TextConfig, gen: torch.Generator) -> Rollout:
    """Sample one response per prompt, ``ppo.batch_size`` prompts at a time, as one rollout."""
    size = cfg.ppo.batch_size
    parts = [
        model.generate(prompts[i : i + size], cfg.ppo.response_length, temperature=cfg.ppo.temperature, generator=gen)
        for i in range(0, len(prompts), size)
    ]
    if len(parts) == 1:
        return parts[0]
    prompts_, responses = [], []
    for r in parts:
        prompts_ += r.prompts()
        responses += r.responses()
    tok = model.tokenizer
    return Rollout.from_lists(
        prompts_, responses, pad_id=tok.pad_id, end_ids=tok.end_ids, response_width=cfg.ppo.response_length
    )


def _pair_accuracy(predicted: np.ndarray, true: np.ndarray) -> float:
    """``(2, n)`` each: share of pairs (column-wise) the prediction orders as the truth does; true ties left out."""
    d_true, d_pred = true[0] - true[1], predicted[0] - predicted[1]
    keep = d_true != 0
    return float(np.mean(np.sign(d_pred[keep]) == np.sign(d_true[keep]))) if keep.any() else math.nan


def _kl(ppo: TextPPO, rollout: Rollout) -> float:
    """Mean over responses of Σ_t log π − log ρ at the sampling temperature (nats per response)."""
    logp_pi, _ = ppo._in_chunks(ppo.policy, rollout)
    logp_ref, _ = ppo._in_chunks(ppo.ref, rollout)
    mask = rollout.response_mask[:, rollout.prompt_width :]  # (B, N): padding after a response's end does not count
    return float(((logp_pi - logp_ref) * mask).sum(1).mean())


class TextRun:
    """The state of one text run (see the module docstring); :func:`train_text` drives it."""

    def __init__(self, cfg: TextConfig, path: str | Path, *, oracle: Any = None) -> None:
        self.cfg, self.path = cfg, Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoint").mkdir(exist_ok=True)
        threads = cfg.threads or (1 if cfg.model in TINY_MODELS else 0)
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7)
        self.score = get_scorer(cfg.oracle.scorer)  # before the model loads: a missing package stops the run at once
        self.judge = get_scorer(cfg.oracle.judge)
        self.policy = load_lm(cfg.model)
        tok = self.policy.tokenizer
        texts = load_prompt_texts(cfg.prompts)
        ids = [tok.encode(t) for t in texts]
        ids = [p for p in ids if p and 0 not in p]
        if len(ids) <= cfg.eval_prompts:
            raise ConfigError(
                f"config: eval_prompts = {cfg.eval_prompts} leaves no training prompts out of {len(ids)}; lower it"
            )
        order = np.random.default_rng(12345).permutation(len(ids))  # the same held-out prompts for every seed
        self.eval_prompts = [ids[i] for i in order[: cfg.eval_prompts]]
        self.train_prompts = [ids[i] for i in order[cfg.eval_prompts :]]
        self.responses = Responses(self.policy, ids, cfg.ppo.response_length)
        # a task whose scorers read the prompt summarizes it (an article): its evaluations log copy rates
        self.summarize = reads_prompt(self.score) or reads_prompt(self.judge)
        knob_names = ("beta", "epsilon", "skip_threshold", "equal_threshold")  # set explicitly: override the preset
        knobs = {k: getattr(cfg.oracle, k) for k in knob_names if f"oracle.{k}" in cfg.overrides}
        self.oracle = TextOracle(cfg.oracle.scorer, tokenizer=tok, teacher=cfg.oracle.teacher, seed=cfg.seed, **knobs)
        self.asker = oracle if oracle is not None else self.oracle  # who answers: the scorer, or people
        self.store = ComparisonStore(self.path / "labels.sqlite")
        self.metrics = MetricsLog(self.path / "metrics.csv")
        self.reward_model: TextRewardModel | None = None
        self.trainer: TextRewardTrainer | None = None
        if cfg.reward_source == "learned":
            self.reward_model = TextRewardModel(
                self.policy, heads=cfg.reward.heads, seed=cfg.seed, pool=cfg.reward.pool
            )
            r = cfg.reward
            self.trainer = TextRewardTrainer(
                self.reward_model, lr=r.lr, backbone_lr=r.backbone_lr, batch_size=r.batch_size,
                epsilon=r.epsilon, l2=r.l2, val_fraction=r.val_fraction, seed=cfg.seed,
            )  # fmt: skip
            reward_fn = self._learned_reward
        else:
            reward_fn = self._oracle_reward
        self.ppo = TextPPO(self.policy, reward_fn, dataclasses.replace(cfg.ppo, seed=cfg.ppo.seed + cfg.seed))
        self.step = 0
        self.online_asked = 0
        self._rho: dict[str, np.ndarray] | None = None
        self._rho_rollouts: tuple[Rollout, Rollout] | None = None

    # -- rewards ----------------------------------------------------------------------------------
    def _learned_reward(self, rollout: Rollout) -> torch.Tensor:
        assert self.reward_model is not None
        return self.reward_model.predict(rollout.tokens, rollout.attention_mask, rollout.response_mask)[0]

    def _oracle_reward(self, rollout: Rollout) -> torch.Tensor:
        scores = score_texts(self.score, self.responses.texts(rollout), self.responses.prompt_texts(rollout))
        return torch.as_tensor(scores, dtype=torch.float32)

    # -- labels -----------------------------------------------------------------------------------
    def ask(self, model: LanguageModel, n: int) -> dict[str, float]:
        """Sample ``k`` responses per prompt from ``model`` and ask ``n`` queries; store the answers."""
        cfg, k = self.cfg, self.cfg.labels.k
        fitted = self.store.count() > 0  # the reward model has seen labels: the samplers may read its heads
        pool = n if cfg.labels.sampler == "uniform" or not fitted else n * cfg.labels.candidates
        chosen = self.rng.choice(len(self.train_prompts), size=pool, replace=pool > len(self.train_prompts))
        prompts = [self.train_prompts[i] for i in chosen for _ in range(k)]  # k responses to each prompt
        rollout = _generate(model, prompts, cfg, self.gen)
        segments = self.responses.segments(rollout, first_id=self.store.max_segment_id() + 1)
        tuples = np.arange(len(segments)).reshape(pool, k)  # (pool, k): responses to the same prompt
        ensemble = self.reward_model if fitted else None
        queries, info = select_queries(
            segments, n=n, k=k, sampler=cfg.labels.sampler, ensemble=ensemble, rng=self.rng, tuples=tuples
        )
        used = {s.id for q in queries for s in q.segments}
        self.store.add_segments(s for s in segments if s.id in used)  # committed before anyone is asked
        self.asker.submit(queries)
        answers: list[Comparison] = self.asker.collect(timeout=None)
        while self.asker.pending():  # people answer one by one: wait for all of them
            answers += self.asker.collect(timeout=None)
        self.store.add_many(answers)
        return {**info, "labels/total": float(self.store.count())}

    def fit(self) -> dict[str, float]:
        assert self.trainer is not None
        comps = self.store.comparisons()
        segs = self.store.segments({i for c in comps for i in c.segment_ids})
        return self.trainer.fit(comps, segs, epochs=self.cfg.reward.epochs)

    def norm_samples(self) -> Rollout:
        """ρ's samples the reward is normalized on: the same ones on every resume (their own generators)."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 11)
        chosen = np.random.default_rng(self.cfg.seed + 11).choice(len(self.train_prompts), self.cfg.reward.norm_samples)
        return _generate(self.ppo.ref, [self.train_prompts[i] for i in chosen], self.cfg, gen)

    def normalize(self) -> dict[str, float]:
        """Normalize the reward heads on :meth:`norm_samples`."""
        assert self.reward_model is not None
        return self.reward_model.normalize(self.norm_samples())

    # -- evaluation -------------------------------------------------------------------------------
    def _eval_samples(self, model: LanguageModel, seed: int) -> tuple[Rollout, Rollout]:
        """Two responses from ``model`` to every held-out prompt, as two rollouts ``(a, b)``."""
        gen = torch.Generator().manual_seed(seed)
        return _generate(model, self.eval_prompts, self.cfg, gen), _generate(model, self.eval_prompts, self.cfg, gen)

    def _scored(self, rollouts: tuple[Rollout, Rollout]) -> dict[str, np.ndarray]:
        """Oracle score, judge score, (if learned) reward-model score and (summaries) copy rates of both
        rollouts: ``(2, n)`` each."""
        texts = [self.responses.texts(r) for r in rollouts]
        prompts = [self.responses.prompt_texts(r) for r in rollouts]
        out = {
            "score": np.stack([score_texts(self.score, t, p) for t, p in zip(texts, prompts, strict=True)]),
            "judge": np.stack([score_texts(self.judge, t, p) for t, p in zip(texts, prompts, strict=True)]),
        }
        if self.summarize:
            out["copy"] = np.stack([copy_rate(t, p) for t, p in zip(texts, prompts, strict=True)])
            out["verbatim"] = np.stack([verbatim(t, p) for t, p in zip(texts, prompts, strict=True)])
        if self.reward_model is not None:
            out["rm"] = np.stack([self._learned_reward(r).numpy() for r in rollouts])
        out["texts"] = np.array(texts, dtype=object)
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """On the held-out prompts, two samples of π per prompt against two of ρ.

        ``eval/score`` and ``eval/judge``: mean oracle and held-out-judge scores of π (``eval/rho_*`` of ρ);
        ``eval/win_judge`` / ``eval/win_score``: how often π's response beats ρ's to the same prompt (ties
        count ½); ``eval/kl``: KL(π‖ρ) in nats per response; ``eval/reward_model``: the reward model's mean
        on π; ``eval/rm_acc_rho`` / ``eval/rm_acc_pi``: how often the reward model orders a pair of responses
        to the same prompt as the oracle does, on ρ's samples and on π's (distribution shift). Summaries
        (scorers that read the prompt) add ``eval/copy`` / ``eval/rho_copy``: the share of π's (ρ's) summary
        trigrams found in the article, and ``eval/verbatim`` / ``eval/rho_verbatim``: the share of summaries
        that are one of the article's sentences word for word.
        """
        if self._rho is None:  # ρ's held-out samples and their oracle and judge scores never change
            self._rho_rollouts = self._eval_samples(self.ppo.ref, self.cfg.seed + 999)
            self._rho = self._scored(self._rho_rollouts)
        pi_rollouts = self._eval_samples(self.policy, self.cfg.seed + 1000 + self.step)
        pi, rho = self._scored(pi_rollouts), self._rho

        def win(a: np.ndarray, b: np.ndarray) -> float:
            return float(np.mean((a > b) + 0.5 * (a == b)))

        out = {
            "eval/score": float(pi["score"].mean()),
            "eval/judge": float(pi["judge"].mean()),
            "eval/rho_score": float(rho["score"].mean()),
            "eval/rho_judge": float(rho["judge"].mean()),
            "eval/win_judge": win(pi["judge"][0], rho["judge"][0]),
            "eval/win_score": win(pi["score"][0], rho["score"][0]),
            "eval/kl": _kl(self.ppo, pi_rollouts[0]),
            "eval/ended": float(pi_rollouts[0].ended.float().mean()),
            "eval/length": float(pi_rollouts[0].response_lengths.float().mean()),
        }
        if self.summarize:
            for key in ("copy", "verbatim"):
                out[f"eval/{key}"] = float(pi[key].mean())
                out[f"eval/rho_{key}"] = float(rho[key].mean())
        if self.reward_model is not None:
            rho_rm = np.stack([self._learned_reward(r).numpy() for r in self._rho_rollouts])  # (2, n) current model
            out["eval/reward_model"] = float(pi["rm"].mean())
            out["eval/rm_acc_rho"] = _pair_accuracy(rho_rm, rho["score"])
            out["eval/rm_acc_pi"] = _pair_accuracy(pi["rm"], pi["score"])
        with (self.path / "samples.csv").open("a", newline="") as f:
            w = csv.writer(f)
            if f.tell() == 0:
                w.writerow(["step", "prompt", "response", "score", "judge"])
            tok = self.policy.tokenizer
            for i, p in enumerate(pi_rollouts[0].prompts()[:8]):
                w.writerow([self.step, tok.decode(p), pi["texts"][0][i], f"{pi['score'][0][i]:.4f}",
                            f"{pi['judge'][0][i]:.4f}"])  # fmt: skip
        return out

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self) -> None:
        ck = self.path / "checkpoint"
        self.ppo.save(ck / "ppo.pt")
        if self.reward_model is not None:
            with atomic_write(ck / "reward.pt") as tmp:
                torch.save(self.reward_model.state_dict(), tmp)
        state = {
            "step": self.step,
            "online_asked": self.online_asked,
            "rng": rng_state(self.rng),
            "gen": self.gen.get_state().tolist(),
        }
        atomic_write_text(ck / "state.json", json.dumps(state))  # written last: the commit marker

    def restore(self) -> bool:
        ck = self.path / "checkpoint"
        if not (ck / "state.json").exists():
            return False
        state = json.loads((ck / "state.json").read_text())
        self.ppo.load(ck / "ppo.pt")
        if self.reward_model is not None:
            self.reward_model.load_state_dict(torch.load(ck / "reward.pt", weights_only=True))
            self.reward_model.norm_batch = self.norm_samples()  # the saved gain and bias stay; later fits reuse these
        self.step, self.online_asked = int(state["step"]), int(state["online_asked"])
        self.rng = restore_rng(state["rng"])
        self.gen.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
        self.metrics.truncate_after(self.step * self.cfg.ppo.batch_size)
        return True

    def online_due(self) -> int:
        """Online labels to ask after the current step (evenly over ``rounds`` rounds)."""
        lab = self.cfg.labels
        if not lab.online or self.reward_model is None:
            return 0
        every = max(1, self.cfg.ppo_steps // (lab.rounds + 1))
        if self.step % every or self.step >= self.cfg.ppo_steps:
            return 0
        done_rounds = self.step // every
        target = min(lab.online, round(lab.online * done_rounds / lab.rounds))
        return max(0, target - self.online_asked)


def train_text(
    cfg: TextConfig,
    path: str | Path,
    *,
    progress: bool = True,
    oracle: Any = None,
    on_start: Callable[[TextRun], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a text run in ``path``; returns the final evaluation and label count.

    ``oracle`` answers the queries instead of the configured scorer (e.g. a
    :class:`~prefrl.oracles.HumanOracle` on the web labeler's queue); ``on_start(run)`` is called once the
    run is built, before anything is asked."""
    final_file = Path(path) / "final.json"
    if final_file.exists():  # needs no lock: nothing is written, and its trainer may still be writing plots
        return json.loads(final_file.read_text())
    with training_lock(path):
        return _train_text(cfg, Path(path), progress=progress, oracle=oracle, on_start=on_start)


def _train_text(
    cfg: TextConfig, path: Path, *, progress: bool, oracle: Any, on_start: Callable[[TextRun], None] | None
) -> dict[str, Any]:
    final_file = path / "final.json"
    if final_file.exists():  # by the process that held the lock before this one
        return json.loads(final_file.read_text())
    run = TextRun(cfg, path, oracle=oracle)
    if on_start is not None:
        on_start(run)
    save_text_config(cfg, path / "config.toml")
    clock0 = time.perf_counter()
    resumed = run.restore()
    wall0 = float(run.metrics.rows[-1].get("wall_s") or 0.0) if resumed and run.metrics.rows else 0.0

    def log(row: dict[str, Any]) -> None:
        responses = run.step * cfg.ppo.batch_size  # "timesteps" of a text run: responses trained on
        run.metrics.log(
            {"timesteps": responses, "step": run.step, "wall_s": round(wall0 + time.perf_counter() - clock0, 2), **row}
        )

    if not resumed:
        row: dict[str, Any] = {}
        if run.reward_model is not None:
            row.update(run.normalize())
            if cfg.labels.offline:
                row.update(run.ask(run.ppo.ref, cfg.labels.offline))
                row.update(run.fit())
        row.update(run.evaluate())
        log(row)
        run.save()
    bar = _progress(cfg.ppo_steps, run.step, progress)
    while run.step < cfg.ppo_steps:
        batch = [run.train_prompts[i] for i in run.rng.integers(len(run.train_prompts), size=cfg.ppo.batch_size)]
        row = run.ppo.step(batch)
        run.step += 1
        n = run.online_due()
        if n:
            row.update(run.ask(run.policy, n))
            run.online_asked += n
            row.update(run.fit())
        if run.step % cfg.eval_every == 0 or run.step == cfg.ppo_steps:
            row.update(run.evaluate())
        log(row)
        run.save()
        if bar is not None:
            bar.set_postfix(
                score=f"{row.get('ppo/score', math.nan):.2f}", kl=f"{row.get('ppo/kl', math.nan):.2f}", refresh=False
            )
            bar.update(1)
    if bar is not None:
        bar.close()
    last = next(r for r in reversed(run.metrics.rows) if r.get("eval/score") not in (None, ""))
    result = {k: float(v) for k, v in last.items() if k.startswith("eval/")}
    result.update(step=run.step, labels=run.store.count(), wall_s=round(wall0 + time.perf_counter() - clock0, 1))
    final_file.write_text(json.dumps(result, indent=1))
    run.store.close()
    return result


def _progress(total: int, done: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=done, desc="ppo", unit="step")


def plot_text(path: str | Path) -> list[Path]:
    """Draw a text run's plots into ``RUN/plots/``: scores vs PPO steps, and scores vs KL (over-optimization)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = [r for r in MetricsLog(path / "metrics.csv").rows if r.get("eval/score") not in (None, "")]
    if not rows:
        raise ConfigError(f"{path}: no evaluations logged yet; nothing to plot")
    cfg = load_text_config(path / "config.toml")

    def col(key: str) -> np.ndarray:
        return np.array([float(r.get(key) or "nan") for r in rows])

    step, kl = col("step"), col("eval/kl")
    lines = [("eval/score", f"oracle ({cfg.oracle.scorer})"), ("eval/judge", f"held-out judge ({cfg.oracle.judge})")]
    if cfg.reward_source == "learned":
        lines.append(("eval/reward_model", "reward model (normalized)"))
    summaries = rows[-1].get("eval/copy") not in (None, "")  # a summarize task: how much π copies
    if summaries:
        lines.append(("eval/copy", "copy rate of π (trigrams in the article)"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in lines:
        axes[0].plot(step, col(key), marker="o", ms=3, label=label)
        axes[1].plot(kl, col(key), marker="o", ms=3, label=label)
    if summaries:
        for ax in axes:
            ax.axhline(col("eval/rho_copy")[-1], ls="--", c="grey", lw=1, label="copy rate of ρ")
    axes[0].set(xlabel="PPO step", ylabel="mean score on held-out prompts", title=f"{cfg.name}: {cfg.model}")
    axes[1].set(xlabel="KL(π‖ρ), nats per response", ylabel="mean score", title="over-optimization curve")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = path / "plots"
    out.mkdir(exist_ok=True)
    target = out / "text.png"
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return [target]
