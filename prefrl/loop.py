"""The training loop of Christiano et al. (2017), stage by stage.

Three processes, run here in turn: the policy acts and learns on the *predicted* reward; pairs of
segments the reward ensemble disagrees on most go to an oracle; the ensemble is refit to every
comparison so far. Everything a run produces goes to its :class:`~prefrl.run.RunDir`, and a
checkpoint after every chunk (:mod:`prefrl.checkpoint`) lets a killed run resume without losing a label.
The pieces are built in :mod:`prefrl.make`, and measured in :mod:`prefrl.evaluation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.logger import configure
from tqdm import tqdm

from prefrl import checkpoint
from prefrl.agents import keep_in_step, pin_progress
from prefrl.checkpoint import Pieces, TrainState
from prefrl.config import TrainConfig
from prefrl.data import SKIP, TIE, ComparisonStore
from prefrl.evaluation import evaluate, evaluate_due, rollout_metrics, write_segment_scatter
from prefrl.make import (
    check_config,
    chunk_steps,
    clip_state_fn,
    ends_share,
    make_agent,
    make_oracle,
    make_reward,
    make_trainer,
    make_vec_env,
    reward_center,
    segment_length,
)
from prefrl.oracles import Oracle, collect_answers, wait_for_oracle
from prefrl.reward import RewardEnsemble
from prefrl.reward.load import freeze_reward
from prefrl.reward.normalize import normalize, standardize_on
from prefrl.run import RunDir, Stopwatch, training_lock
from prefrl.segments import LabelSchedule, RecordSegments, SegmentBuffer, collect_random, select_queries
from prefrl.wrappers import LearnedReward


@dataclass
class Result:
    run: RunDir
    timesteps: int
    true_return: float
    labels: int


def train(cfg: TrainConfig, run: RunDir, *, oracle: Oracle | None = None, progress: bool = True) -> Result:
    """Learn ``cfg.env`` from preferences (or from its true reward when ``cfg.reward_source == "true"``)."""
    if run.finished():  # needs no lock: nothing is written, and its trainer may still be writing plots
        return Result(run, **run.read_final())
    with training_lock(run.path):
        return _train(cfg, run, oracle=oracle, progress=progress)


def _train(cfg: TrainConfig, run: RunDir, *, oracle: Oracle | None, progress: bool) -> Result:
    # The algorithm, top to bottom in one function (the stages numbered as in the paper); hence its length.
    if run.finished():  # by the process that held the lock before this one
        return Result(run, **run.read_final())
    resuming = run.has_checkpoint()
    if not resuming:
        run.save_config(cfg)
    if cfg.reward_source in ("true", "frozen"):
        return train_fixed_reward(cfg, run, progress=progress)
    check_config(cfg)

    # The pieces: env stack (true reward inside), segment recorder, reward ensemble, agent, label store.
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    T = segment_length(cfg)
    p, env = build(cfg, T)
    labels = ComparisonStore(run.labels_path)
    oracle = oracle if oracle is not None else make_oracle(cfg.oracle, seed=cfg.seed, labels_path=run.labels_path)
    schedule = LabelSchedule(
        total=cfg.labels.total,
        initial_fraction=cfg.labels.initial_fraction,
        t0=cfg.labels.t0,
        total_timesteps=cfg.total_timesteps,
    )
    chunk = chunk_steps(cfg, p.agent)
    log = run.metrics()
    state = TrainState(timesteps=0, random_steps=0, wall_s=0.0)
    if resuming:
        state, rng = checkpoint.restore(run, cfg, p)
        log.truncate_after(p.agent.num_timesteps)
    else:  # a run started over (its checkpoint moved aside) logs afresh; its labels are reused
        log.truncate_after(-1)
    agent = p.agent
    pin_progress(agent, cfg.total_timesteps)
    clock = Stopwatch(offset=state.wall_s)
    bar = tqdm(total=cfg.total_timesteps, initial=agent.num_timesteps, disable=not progress, unit="step", desc=cfg.name)

    # 1. Before RL: label segments of a random policy, fit the reward to them.
    if not state.pretrained:
        n0 = schedule.due(0)
        # Plenty of candidates: where a random policy rarely ends an episode (Acrobot), a few ends must be in there.
        state.random_steps = collect_random(
            p.record,
            min_segments=min(max(10 * cfg.labels.k * n0, 200), p.buffer.capacity),
            max_steps=20 * max(10 * n0, 200) * T,
            rng=rng,
        )
        metrics = ask_and_fit(oracle, n0, cfg.reward.initial_epochs, p=p, labels=labels, cfg=cfg, rng=rng, wait=True)
        state.pretrained = True
        log.log({"timesteps": 0, "wall_s": clock(), **_label_counts(labels), **metrics})
        checkpoint.save(run, p, rng, state, wall_s=clock())

    while agent.num_timesteps < cfg.total_timesteps:
        # 2. The policy acts and learns on the predicted reward.
        wait_for_oracle(oracle, labels, max_pending=cfg.labels.max_pending)
        since = agent.num_timesteps
        agent.learn(chunk, reset_num_timesteps=False, progress_bar=False)
        # 3-4. Queries due by now go to the oracle; the reward is refit to every comparison so far.
        metrics = ask_and_fit(
            oracle, schedule.due(agent.num_timesteps), cfg.reward.epochs, p=p, labels=labels, cfg=cfg, rng=rng
        )
        row = {
            "timesteps": agent.num_timesteps,
            "wall_s": clock(),
            **_label_counts(labels),
            **metrics,
            **rollout_metrics(agent, env),
            **evaluate_due(agent, cfg, since, reward=p.reward, window=T),
        }
        log.log(row)
        write_segment_scatter(run, p.reward, p.buffer)
        checkpoint.save(run, p, rng, state, wall_s=clock())
        bar.update(agent.num_timesteps - bar.n)
        bar.set_postfix(_postfix(row), refresh=False)
    bar.close()

    final = evaluate(agent, cfg, reward=p.reward, window=T)
    counts = _label_counts(labels)
    log.log({"timesteps": agent.num_timesteps, "wall_s": clock(), **counts, **final})
    labels.close()
    env.close()
    return finish(run, agent.num_timesteps, final, counts["labels/total"])


def build(cfg: TrainConfig, T: int) -> tuple[Pieces, LearnedReward]:
    """The env stack (true reward inside, the learned one on top), segment recorder, reward ensemble and its
    trainer, and the agent acting on the learned reward."""
    buffer = SegmentBuffer(cfg.segments.buffer_size)
    venv = make_vec_env(cfg.env, seed=cfg.seed)
    record = RecordSegments(venv, length=T, buffer=buffer, env_id=cfg.env.id, state_fn=clip_state_fn(cfg))
    reward = make_reward(cfg, record)
    trainer = make_trainer(cfg, reward)
    env = LearnedReward(record, reward)
    agent = make_agent(cfg.agent, env, seed=cfg.seed)
    agent.set_logger(configure(None, []))
    return Pieces(agent=agent, reward=reward, trainer=trainer, buffer=buffer, record=record), env


def ask_and_fit(
    oracle: Oracle,
    n_due: int,
    epochs: int,
    *,
    p: Pieces,
    labels: ComparisonStore,
    cfg: TrainConfig,
    rng: np.random.Generator,
    wait: bool = False,
) -> dict[str, float]:
    """Stages 3 and 4: the oracle compares the queries the ensemble disagrees on most; refit the reward.
    With ``wait``, every answer is in before the fit (a person labels the first batch before RL starts)."""
    metrics = ask(oracle, n_due, buffer=p.buffer, reward=p.reward, labels=labels, cfg=cfg, rng=rng)
    if wait:
        wait_for_oracle(oracle, labels, max_pending=0)
    comparisons = labels.comparisons(last=cfg.reward.max_labels or None)
    if any(c.label != SKIP for c in comparisons):
        segments = labels.segments(i for c in comparisons for i in c.segment_ids)
        if wait and p.reward.standardize:  # the first fit: the inputs' statistics, fixed from here on
            standardize_on(p.reward, segments.values())
        in_step = keep_in_step(p.agent, p.reward, relabel=cfg.agent.relabel)  # brought up to date after the refit
        metrics |= p.trainer.fit(comparisons, segments, epochs=epochs, min_steps=cfg.reward.min_steps)
        if wait or cfg.reward.norm_on != "first":
            seen = list(segments.values()) if cfg.reward.norm_on != "recent" else None
            metrics |= normalize(p.reward, p.buffer, center=reward_center(cfg), std=cfg.reward.std, rng=rng, on=seen)
        metrics |= in_step()
    return metrics


def train_fixed_reward(cfg: TrainConfig, run: RunDir, *, progress: bool = True) -> Result:
    """The same agent and chunks on a reward that does not change: the environment's own (the RL baseline), or
    with ``reward_source = "frozen"`` the final learned reward of the run ``cfg.reward_from``."""
    torch.manual_seed(cfg.seed)
    T = segment_length(cfg)  # the pieces evaluations cut a frozen reward's play into
    venv = make_vec_env(cfg.env, seed=cfg.seed)
    reward = freeze_reward(cfg, run) if cfg.reward_source == "frozen" else None
    if reward is not None:
        venv = LearnedReward(venv, reward)
    agent = make_agent(cfg.agent, venv, seed=cfg.seed)
    agent.set_logger(configure(None, []))
    log = run.metrics()
    state = TrainState(timesteps=0, wall_s=0.0)
    if run.has_checkpoint():
        agent, state = checkpoint.restore_policy(run, cfg, agent)
        log.truncate_after(agent.num_timesteps)
    pin_progress(agent, cfg.total_timesteps)
    clock = Stopwatch(offset=state.wall_s)
    chunk = chunk_steps(cfg, agent)
    bar = tqdm(total=cfg.total_timesteps, initial=agent.num_timesteps, disable=not progress, unit="step", desc=cfg.name)
    while agent.num_timesteps < cfg.total_timesteps:
        since = agent.num_timesteps
        agent.learn(chunk, reset_num_timesteps=False, progress_bar=False)
        row = {
            "timesteps": agent.num_timesteps,
            "wall_s": clock(),
            **rollout_metrics(agent, venv if reward is not None else None),
            **evaluate_due(agent, cfg, since, reward=reward, window=T),
        }
        log.log(row)
        checkpoint.save_policy(run, agent, TrainState(timesteps=agent.num_timesteps, wall_s=clock()))
        bar.update(agent.num_timesteps - bar.n)
        bar.set_postfix(_postfix(row), refresh=False)
    bar.close()
    final = evaluate(agent, cfg, reward=reward, window=T)
    log.log({"timesteps": agent.num_timesteps, "wall_s": clock(), **final})
    venv.close()
    return finish(run, agent.num_timesteps, final, 0)


def finish(run: RunDir, timesteps: int, final: dict[str, float], labels: int) -> Result:
    """Record the outcome; running a finished run again returns it instead of evaluating again."""
    result = {"timesteps": timesteps, "true_return": final.get("eval/true_return", math.nan), "labels": labels}
    run.write_final(result)
    return Result(run, **result)


# ------------------------------------------------------------------------------------------------
# Asking the oracle.


def ask(
    oracle: Oracle,
    n_due: int,
    *,
    buffer: SegmentBuffer,
    reward: RewardEnsemble,
    labels: ComparisonStore,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """Store the answers that arrived; select the queries due by now and hand them to the oracle.

    The queried segments are committed before the oracle sees them, so an answer that comes back later
    (from a person, or after a crash) always finds its segments.
    """
    collect_answers(oracle, labels)
    n = n_due - len(labels) - oracle.pending()
    if n <= 0:
        return {}
    queries, metrics = select_queries(
        list(buffer),
        n=n,
        k=cfg.labels.k,
        sampler=cfg.labels.sampler,
        candidates=cfg.labels.candidates,
        ends_share=ends_share(cfg),
        ensemble=reward if len(labels) > 0 else None,
        rng=rng,
    )
    labels.add_segments(s for q in queries for s in q.segments)
    oracle.submit(queries)
    collect_answers(oracle, labels)
    return metrics


def _label_counts(labels: ComparisonStore) -> dict[str, int]:
    cs = labels.comparisons()
    return {
        "labels/total": len(cs),
        "labels/ties": sum(c.label == TIE for c in cs),
        "labels/skipped": sum(c.label == SKIP for c in cs),
    }


def _postfix(row: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, name in (("labels/total", "labels"), ("reward/val_acc", "val_acc"), ("rollout/true_return", "return")):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out[name] = f"{v:.3g}" if isinstance(v, float) else str(v)
    return out
