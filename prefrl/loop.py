"""The training loop of Christiano et al. (2017), stage by stage.

Three processes, run here in turn: the policy acts and learns on the *predicted* reward; pairs of
segments the reward ensemble disagrees on most go to an oracle; the ensemble is refit to every
comparison so far. Everything a run produces goes to its :class:`~prefrl.run.RunDir`, and a
checkpoint after every chunk lets a killed run resume without losing a label.
"""

from __future__ import annotations

import copy
import math
import pickle
import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from tqdm import tqdm

from prefrl.agents import is_off_policy, keep_in_step
from prefrl.config import CheckpointError, ConfigError, OracleConfig, TrainConfig, loads_config
from prefrl.data import SKIP, TIE, ComparisonStore, Segment
from prefrl.make import default_segment_length, env_kind, make_agent, make_vec_env, resolve_env_id
from prefrl.oracles import Oracle, make_teacher
from prefrl.reward import RewardEnsemble, RewardTrainer
from prefrl.run import RunDir, Stopwatch, restore_rng, rng_state, training_lock
from prefrl.segments import LabelSchedule, RecordSegments, SegmentBuffer, collect_random, select_queries
from prefrl.wrappers import LearnedReward

TEACHER_KNOBS = ("beta", "gamma", "epsilon", "skip_threshold", "equal_threshold")


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
    buffer = SegmentBuffer(cfg.segments.buffer_size)
    venv = make_vec_env(cfg.env, seed=cfg.seed)
    record = RecordSegments(venv, length=T, buffer=buffer, env_id=cfg.env.id, state_fn=clip_state_fn(cfg))
    reward = make_reward(cfg, record)
    trainer = make_trainer(cfg, reward)
    env = LearnedReward(record, reward)
    agent = make_agent(cfg.agent, env, seed=cfg.seed)
    agent.set_logger(configure(None, []))
    labels = ComparisonStore(run.labels_path)
    oracle = oracle if oracle is not None else make_oracle(cfg.oracle, seed=cfg.seed, labels_path=run.labels_path)
    schedule = LabelSchedule(
        total=cfg.labels.total,
        initial_fraction=cfg.labels.initial_fraction,
        t0=cfg.labels.t0,
        total_timesteps=cfg.total_timesteps,
    )
    chunk = chunk_steps(cfg, agent)
    log = run.metrics()
    state: dict[str, Any] = {"timesteps": 0, "random_steps": 0, "wall_s": 0.0}
    if not resuming:  # a run started over (its checkpoint moved aside) logs afresh; its labels are reused
        log.truncate_after(-1)
    if resuming:
        agent, state, rng = _restore(run, cfg, agent, env, reward, trainer, buffer, record, log)
    pin_progress(agent, cfg.total_timesteps)
    clock = Stopwatch(offset=state["wall_s"])
    bar = tqdm(total=cfg.total_timesteps, initial=agent.num_timesteps, disable=not progress, unit="step", desc=cfg.name)

    def ask_and_fit(n_due: int, epochs: int, *, wait: bool = False) -> dict[str, float]:
        """Stages 3 and 4: the oracle compares the queries the ensemble disagrees on most; refit the reward.
        With ``wait``, every answer is in before the fit (a person labels the first batch before RL starts)."""
        metrics = ask(oracle, n_due, buffer=buffer, reward=reward, labels=labels, cfg=cfg, rng=rng)
        if wait:
            wait_for_oracle(oracle, labels, max_pending=0)
        comparisons = labels.comparisons(last=cfg.reward.max_labels or None)
        if any(c.label != SKIP for c in comparisons):
            segments = labels.segments(i for c in comparisons for i in c.segment_ids)
            if wait and reward.standardize:  # the first fit: the inputs' statistics, fixed from here on
                standardize_on(reward, segments.values())
            in_step = keep_in_step(agent, reward, relabel=cfg.agent.relabel)  # brought up to date after the refit
            metrics |= trainer.fit(comparisons, segments, epochs=epochs, min_steps=cfg.reward.min_steps)
            if wait or cfg.reward.norm_on != "first":
                seen = list(segments.values()) if cfg.reward.norm_on != "recent" else None
                metrics |= normalize(reward, buffer, center=reward_center(cfg), std=cfg.reward.std, rng=rng, on=seen)
            metrics |= in_step()
        return metrics

    # 1. Before RL: label segments of a random policy, fit the reward to them.
    if not state.get("pretrained"):
        n0 = schedule.due(0)
        # Plenty of candidates: where a random policy rarely ends an episode (Acrobot), a few ends must be in there.
        state["random_steps"] = collect_random(
            record,
            min_segments=min(max(10 * cfg.labels.k * n0, 200), buffer.capacity),
            max_steps=20 * max(10 * n0, 200) * T,
            rng=rng,
        )
        metrics = ask_and_fit(n0, cfg.reward.initial_epochs, wait=True)
        state["pretrained"] = True
        log.log({"timesteps": 0, "wall_s": clock(), **_label_counts(labels), **metrics})
        checkpoint(run, agent, reward, trainer, buffer, record, rng, state | {"wall_s": clock()})

    while agent.num_timesteps < cfg.total_timesteps:
        # 2. The policy acts and learns on the predicted reward.
        wait_for_oracle(oracle, labels, max_pending=cfg.labels.max_pending)
        since = agent.num_timesteps
        agent.learn(chunk, reset_num_timesteps=False, progress_bar=False)
        # 3-4. Queries due by now go to the oracle; the reward is refit to every comparison so far.
        metrics = ask_and_fit(schedule.due(agent.num_timesteps), cfg.reward.epochs)
        row = {
            "timesteps": agent.num_timesteps,
            "wall_s": clock(),
            **_label_counts(labels),
            **metrics,
            **rollout_metrics(agent, env),
            **evaluate_due(agent, cfg, since, reward=reward, window=T),
        }
        log.log(row)
        write_segment_scatter(run, reward, buffer)
        checkpoint(run, agent, reward, trainer, buffer, record, rng, state | {"wall_s": clock()})
        bar.update(agent.num_timesteps - bar.n)
        bar.set_postfix(_postfix(row), refresh=False)
    bar.close()

    final = evaluate(agent, cfg, reward=reward, window=T)
    counts = _label_counts(labels)
    log.log({"timesteps": agent.num_timesteps, "wall_s": clock(), **counts, **final})
    labels.close()
    env.close()
    return finish(run, agent.num_timesteps, final, counts["labels/total"])


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
    state: dict[str, Any] = {"timesteps": 0, "wall_s": 0.0}
    if run.has_checkpoint():
        state = read_checkpoint(run, "state.json", run.read_state)
        agent = read_checkpoint(run, "agent.zip, normalize.npz or replay.pkl", lambda: load_agent(agent, run, cfg))
        log.truncate_after(agent.num_timesteps)
    pin_progress(agent, cfg.total_timesteps)
    clock = Stopwatch(offset=state["wall_s"])
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
        save_agent(agent, run)
        run.write_state({"timesteps": agent.num_timesteps, "wall_s": clock()})
        bar.update(agent.num_timesteps - bar.n)
        bar.set_postfix(_postfix(row), refresh=False)
    bar.close()
    final = evaluate(agent, cfg, reward=reward, window=T)
    log.log({"timesteps": agent.num_timesteps, "wall_s": clock(), **final})
    venv.close()
    return finish(run, agent.num_timesteps, final, 0)


def segment_length(cfg: TrainConfig) -> int:
    """Steps per segment: ``cfg.segments.length``, or the env's default when that is 0."""
    return cfg.segments.length or default_segment_length(cfg.env)


def finish(run: RunDir, timesteps: int, final: dict[str, float], labels: int) -> Result:
    """Record the outcome; running a finished run again returns it instead of evaluating again."""
    result = {"timesteps": timesteps, "true_return": final.get("eval/true_return", math.nan), "labels": labels}
    run.write_final(result)
    return Result(run, **result)


# ------------------------------------------------------------------------------------------------
# The stages' helpers, one job each.


def make_oracle(cfg: OracleConfig, *, seed: int, labels_path: Path | None = None) -> Oracle:
    """The oracle ``cfg`` names. ``human`` queues questions in the label store at ``labels_path`` for the web
    labeler (``prefrl label RUN``); without a path its queue is in memory, which only checks that it can be built.
    ``replay`` imports ``cfg.replay_file`` (an npz export) into the store at ``labels_path``."""
    if cfg.kind == "human":
        from prefrl.labeler import require_labeler
        from prefrl.oracles import HumanOracle

        require_labeler()
        return HumanOracle(labels_path if labels_path is not None else "sqlite://")
    if cfg.kind == "replay":
        # The exported comparisons (and their segments) go into this run's label store up front, so the reward
        # is fit to them from the start; queries about this run's own segments are answered "can't tell".
        from prefrl.export import import_labels, read_npz
        from prefrl.oracles import ReplayOracle

        if labels_path is None:
            read_npz(Path(cfg.replay_file))  # a missing or unreadable file is refused before any compute
            return ReplayOracle([])
        with ComparisonStore(labels_path) as store:
            return ReplayOracle(import_labels(Path(cfg.replay_file), store))
    if cfg.kind != "synthetic":
        raise ConfigError(
            f"oracle.kind = '{cfg.kind}' is not available in `prefrl train` yet; use 'synthetic' "
            "(comparisons of true returns), 'human' (the web labeler) or 'replay' (an exported label file)"
        )
    knobs = {k: getattr(cfg, k) for k in cfg.overrides if k in TEACHER_KNOBS}
    if knobs.get("skip_threshold") == -math.inf:
        knobs["skip_threshold"] = None
    return make_teacher(cfg.teacher, seed=seed, **knobs)


def clip_state_fn(cfg: TrainConfig) -> Any:
    """People watch clips of queried segments: keep the simulator state of every step to render them later."""
    if cfg.oracle.kind != "human":
        return None
    from prefrl.clips import state_fn_for

    return state_fn_for(cfg.env.id)


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


def collect_answers(oracle: Oracle, labels: ComparisonStore, *, timeout: float = 0.0) -> int:
    """Commit the answers that are ready; returns how many were new."""
    return labels.add_many(oracle.collect(timeout=timeout))


def wait_for_oracle(oracle: Oracle, labels: ComparisonStore, *, max_pending: int) -> None:
    """An asynchronous oracle (a person) that fell behind pauses the agent rather than let it run on a stale reward."""
    while oracle.pending() > max_pending:
        collect_answers(oracle, labels, timeout=1.0)


def reward_center(cfg: TrainConfig) -> str:
    """``cfg.reward.center``, with ``auto`` settled for Atari: the mean, as the paper. A game over is rare and a
    game long, so with the game-over state as the zero most of an A2C agent's reward spread would be a constant
    per step. Elsewhere ``auto`` stays, for :func:`normalize` to pick the absorbing state once an episode ended."""
    if cfg.reward.center == "auto" and env_kind(cfg.env) == "atari":
        return "mean"
    return cfg.reward.center


def ends_share(cfg: TrainConfig) -> float:
    """``cfg.labels.ends_share``, with ``auto`` settled: 0 on Atari, as the paper, else 0.5. Half the candidates
    with an episode's end help where an end is all the oracle can tell apart (a random CartPole or Acrobot policy
    ends few episodes). An Atari episode ends at a game over or a lost life, rare in a long game and to the
    oracle no different from any lost point: on Pong, half the candidates with a game over made 85 % of the
    queries show one, and 72 % of the answers ties."""
    if cfg.labels.ends_share == "auto":
        return 0.0 if env_kind(cfg.env) == "atari" else 0.5
    return float(cfg.labels.ends_share)


def normalize(
    reward: RewardEnsemble,
    buffer: SegmentBuffer,
    *,
    center: str,
    std: float = 1.0,
    rng: np.random.Generator,
    on: list[Segment] | None = None,
) -> dict[str, float]:
    """Rescale each member to spread ``std`` over the real steps of ``on`` (default: the buffer's 1,000 most recent
    segments); pin the absorbing state at 0 when episodes end (any segment in the buffer ended one)."""
    if center == "auto":
        center = "absorbing" if buffer.any_terminated else "mean"
    return normalize_on(reward, buffer.recent(1000) if on is None else on, center=center, std=std, rng=rng)


def normalize_on(
    reward: RewardEnsemble, segs: list[Segment], *, center: str, std: float = 1.0, rng: np.random.Generator
) -> dict[str, float]:
    """:func:`normalize` on the real steps of ``segs``; ``center="auto"``: absorbing if one of them ended an episode.
    Returns the new shift and scale (``reward/norm_*``)."""
    if not segs:
        return {}
    if center == "auto":
        center = "absorbing" if any(s.terminated for s in segs) else "mean"
    obs, act = _real_steps(segs)
    if len(obs) > 20_000:
        idx = rng.choice(len(obs), size=20_000, replace=False)
        obs, act = obs[idx], act[idx]
    return reward.set_normalization(obs, act, center=center, std=std)


def rollout_metrics(agent: Any, env: LearnedReward | None) -> dict[str, float]:
    eps = list(agent.ep_info_buffer or [])
    out = {
        "rollout/true_return": float(np.mean([e["r"] for e in eps])) if eps else math.nan,
        "rollout/ep_len": float(np.mean([e["l"] for e in eps])) if eps else math.nan,
    }
    if env is not None and env.predicted_returns:
        out["rollout/predicted_return"] = float(np.mean(env.predicted_returns))
    return out


def make_reward(cfg: TrainConfig, venv: VecEnv) -> RewardEnsemble:
    """The reward ensemble ``cfg.reward`` describes, for ``venv``'s observations and actions (untrained)."""
    try:
        return RewardEnsemble(
            venv.observation_space,
            venv.action_space,
            members=cfg.reward.members,
            hidden=tuple(cfg.reward.hidden),
            model=cfg.reward.model,
            use_action={"auto": None, "yes": True, "no": False}[cfg.reward.use_action],
            dropout=cfg.reward.dropout,
            blank=cfg.reward.blank,
            standardize=cfg.reward.standardize_inputs,
            seed=cfg.seed,
        )
    except ValueError as e:  # a model that does not fit the env's spaces, a blanked region outside the frame
        raise ConfigError(f"reward: {e}") from None


def standardize_on(reward: RewardEnsemble, segs: Iterable[Segment]) -> None:
    """Standardize the reward model's inputs with the statistics of the real steps of ``segs``."""
    reward.set_input_normalization(*_real_steps(list(segs)))


def _real_steps(segs: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions of the real steps of ``segs`` (absorbing padding left out), concatenated."""
    return np.concatenate([s.obs[: s.length] for s in segs]), np.concatenate([s.actions[: s.length] for s in segs])


def make_trainer(cfg: TrainConfig, reward: RewardEnsemble) -> RewardTrainer:
    """The trainer ``cfg.reward`` describes, for ``reward``."""
    return RewardTrainer(
        reward,
        lr=cfg.reward.lr,
        batch_size=cfg.reward.batch_size,
        epsilon=cfg.reward.epsilon,
        val_fraction=cfg.reward.val_fraction,
        l2=cfg.reward.l2,
        l2_bounds=tuple(cfg.reward.l2_bounds),
        seed=cfg.seed,
    )


def refit_reward(run: RunDir, labels: int) -> RewardEnsemble:
    """A preference run's reward fit afresh to its first ``labels`` answers (``reward.initial_epochs`` epochs) and
    normalized on the segments they compare: near enough the reward the run's agent had when that many were in,
    to ask what it paid for then (``prefrl eval AGENT_RUN --reward-of RUN --labels N``)."""
    cfg = run.load_config()
    if cfg.reward_source != "learned" or not run.labels_path.exists():
        raise FileNotFoundError(
            f"{run.path}: no labels ({run.labels_path.name}); give a run that learns from preferences"
        )
    with ComparisonStore(run.labels_path) as store:
        answers = store.comparisons()
        if not 1 <= labels <= len(answers):
            raise ConfigError(f"--labels {labels}: {run.path} has {len(answers)} answers; give 1 to {len(answers)}")
        first = [c for c in answers[:labels] if c.label != SKIP]
        segments = store.segments(i for c in first for i in c.segment_ids)
    torch.manual_seed(cfg.seed)
    venv = make_eval_env(cfg)
    reward = make_reward(cfg, venv)
    venv.close()
    if reward.standardize:
        standardize_on(reward, segments.values())
    make_trainer(cfg, reward).fit(first, segments, epochs=cfg.reward.initial_epochs, min_steps=cfg.reward.min_steps)
    rng = np.random.default_rng(cfg.seed)
    normalize_on(reward, list(segments.values()), center=reward_center(cfg), std=cfg.reward.std, rng=rng)
    return reward.eval()


def load_reward(run: RunDir) -> RewardEnsemble:
    """A preference run's reward ensemble as of its last checkpoint, normalized as its agent saw it."""
    cfg = run.load_config()
    path = run.ckpt / "reward.pt"
    if cfg.reward_source != "learned" or not path.exists():
        raise FileNotFoundError(
            f"{run.path}: no learned reward model (checkpoint/reward.pt); give a run that learns from "
            "preferences and has trained a chunk"
        )
    return _reward_from(cfg, path)


def _reward_from(cfg: TrainConfig, path: Path) -> RewardEnsemble:
    venv = make_eval_env(cfg)
    reward = make_reward(cfg, venv)
    venv.close()
    reward.load_state_dict(torch.load(path, weights_only=False)["reward"])
    return reward.eval()


def freeze_reward(cfg: TrainConfig, run: RunDir) -> RewardEnsemble:
    """The reward of the run ``cfg.reward_from``, copied into ``run`` when it starts, so that the run resumes
    on the same reward even if the other one trains on or is deleted."""
    model, model_cfg = run.ckpt / "frozen_reward.pt", run.ckpt / "frozen_reward.toml"
    if not model.exists():
        source = RunDir(cfg.reward_from)
        source_cfg = source.load_config()
        if source_cfg.env.id != cfg.env.id:
            raise ConfigError(
                f"reward_from = {cfg.reward_from!r} learned its reward on {source_cfg.env.id}, this run acts on "
                f"{cfg.env.id}; name a run of the same environment"
            )
        load_reward(source)  # refuses a run without a learned reward
        run.ckpt.mkdir(parents=True, exist_ok=True)
        model_cfg.write_text(source.config_path.read_text())
        shutil.copyfile(source.ckpt / "reward.pt", model.with_suffix(".tmp"))
        model.with_suffix(".tmp").replace(model)
    return _reward_from(loads_config(model_cfg.read_text()), model)


def evaluate(
    agent: Any, cfg: TrainConfig, *, reward: RewardEnsemble | None = None, window: int = 0
) -> dict[str, float]:
    """Mean true return of ``cfg.eval_episodes`` episodes on a fresh env (the policy acts as ``cfg.eval_policy``).

    With ``reward``, also the return each episode earns under that learned reward (``eval/learned_return``):
    whether a reward model ranks a behaviour above another one, say a true-reward agent's above the agent
    trained on it, tells a reward that is wrong from one the agent failed to optimize.

    With ``reward`` and ``window`` > 0, the episodes are also cut into consecutive ``window``-step pieces, as a
    synthetic oracle would be shown them, and :func:`window_agreement` compares their learned and true returns
    (``eval/window_*``): how well the reward ranks what this agent does, not only the segments it was fit to.
    """
    if cfg.eval_episodes <= 0:
        return {}
    venv = make_eval_env(cfg)
    if reward is not None:
        venv = LearnedReward(venv, reward)  # the learned reward of each step; the true return stays in the monitor
    norm = agent.get_vec_normalize_env()
    if norm is not None:  # the policy sees observations as it saw them in training; statistics frozen
        venv = VecNormalize(venv, training=False, norm_reward=False)
        venv.obs_rms = copy.deepcopy(norm.obs_rms)
    running = np.zeros(venv.num_envs)
    learned: list[float] = []
    pieces: list[list[tuple[float, float]]] = [[] for _ in range(venv.num_envs)]  # (learned, true) of each step
    windows: list[tuple[float, float]] = []  # (learned, true) return of each whole window

    def add_learned(step: dict[str, Any], _globals: dict[str, Any]) -> None:
        i = step["i"]
        running[i] += step["reward"]
        if window > 0:
            pieces[i].append((float(step["reward"]), float(step["info"]["true_reward"])))
            if len(pieces[i]) == window:
                windows.append(tuple(np.sum(pieces[i], axis=0)))
                pieces[i].clear()
            if step["done"]:  # the agent's episode ended (on Atari, a lost life): a shorter rest is left out
                pieces[i].clear()
        if step["done"] and "episode" in step["info"]:  # a whole game ends (not a lost life), as counted below
            learned.append(float(running[i]))
            running[i] = 0.0

    returns, lengths = evaluate_policy(
        agent,
        venv,
        n_eval_episodes=cfg.eval_episodes,
        deterministic=eval_deterministic(cfg),
        return_episode_rewards=True,
        callback=add_learned if reward is not None else None,
    )
    venv.close()
    out = {
        "eval/true_return": float(np.mean(returns)),
        "eval/true_return_std": float(np.std(returns)),
        "eval/ep_len": float(np.mean(lengths)),
    }
    if reward is not None:
        out |= {"eval/learned_return": float(np.mean(learned)), "eval/learned_return_std": float(np.std(learned))}
    if reward is not None and window > 0:
        out |= window_agreement(np.array(windows).reshape(-1, 2))
    return out


def window_agreement(windows: np.ndarray, *, max_pairs: int = 1_000_000, seed: int = 0) -> dict[str, float]:
    """How a learned reward ranks pieces of play that a true reward tells apart.

    ``windows``: ``(n, 2)`` learned and true returns of n pieces of play. Returns ``eval/windows`` (n),
    ``eval/window_agreement`` (of the pairs whose true returns differ, the fraction whose learned returns differ
    the same way, a tie counting half: what a synthetic oracle would call the reward's accuracy on this play;
    NaN without such a pair), ``eval/window_corr`` (Pearson r of the two returns; NaN when either is constant).
    All pairs when there are at most ``max_pairs`` of them, else that many drawn at random.

    Examples:
        >>> import numpy as np
        >>> from prefrl.loop import window_agreement
        >>> w = np.array([[0.3, 0.0], [-0.3, -1.0], [0.2, 1.0]])  # a scored point is worth less than none
        >>> {k: round(v, 2) for k, v in window_agreement(w).items()}
        {'eval/windows': 3.0, 'eval/window_agreement': 0.67, 'eval/window_corr': 0.78}
    """
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    n = len(windows)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(n, size=(2, max_pairs))
    dl, dt = windows[i, 0] - windows[j, 0], windows[i, 1] - windows[j, 1]
    told = dt != 0
    agree = np.where(dl[told] == 0, 0.5, np.sign(dl[told]) == np.sign(dt[told]))
    constant = n < 2 or windows[:, 0].std() == 0 or windows[:, 1].std() == 0
    return {
        "eval/windows": float(n),
        "eval/window_agreement": float(agree.mean()) if told.any() else float("nan"),
        "eval/window_corr": float("nan") if constant else float(np.corrcoef(windows[:, 0], windows[:, 1])[0, 1]),
    }


def eval_deterministic(cfg: TrainConfig) -> bool:
    """Whether evaluation takes the policy's most likely action (``cfg.eval_policy``; ``auto``: not on Atari)."""
    if cfg.eval_policy == "auto":
        return env_kind(cfg.env) != "atari"
    return cfg.eval_policy == "deterministic"


def evaluate_due(
    agent: Any, cfg: TrainConfig, since: int, *, reward: RewardEnsemble | None = None, window: int = 0
) -> dict[str, float]:
    """The periodic evaluation, when the last chunk (from step ``since``) crossed a multiple of ``cfg.eval_every``;
    the end of the run has its own."""
    every, t = cfg.eval_every, agent.num_timesteps
    if every <= 0 or t >= cfg.total_timesteps or t // every == since // every:
        return {}
    return evaluate(agent, cfg, reward=reward, window=window)


def write_segment_scatter(run: RunDir, reward: RewardEnsemble, buffer: SegmentBuffer, n: int = 500) -> None:
    segs = buffer.recent(n)
    if not segs:
        return
    pred = reward.returns_of(segs).mean(axis=0)  # (B,)
    true = np.array([s.true_return for s in segs])
    tmp = run.path / "segments.csv.tmp"
    np.savetxt(tmp, np.stack([true, pred], axis=1), delimiter=",", header="true_return,predicted_return", comments="")
    tmp.replace(run.path / "segments.csv")


def checkpoint(
    run: RunDir,
    agent: Any,
    reward: RewardEnsemble,
    trainer: RewardTrainer,
    buffer: SegmentBuffer,
    record: RecordSegments,
    rng: np.random.Generator,
    state: dict[str, Any],
) -> None:
    """Everything needed to resume; ``state.json`` is written last, so a half-written checkpoint is never used."""
    save_agent(agent, run)
    torch.save(
        {"reward": reward.state_dict(), "trainer": trainer.state_dict(), "torch_rng": torch.get_rng_state()},
        run.ckpt / "reward.pt.tmp",
    )
    (run.ckpt / "reward.pt.tmp").replace(run.ckpt / "reward.pt")
    buffer.save(run.ckpt / "buffer.npz")
    state = state | {
        "timesteps": agent.num_timesteps,
        "rng": rng_state(rng),
        "next_segment_id": buffer.next_id,
        "next_episode": record.next_episode,
    }
    run.write_state(state)


def _restore(run, cfg, agent, env, reward, trainer, buffer, record, log):
    state = read_checkpoint(run, "state.json", run.read_state)
    saved = read_checkpoint(run, "reward.pt", lambda: torch.load(run.ckpt / "reward.pt", weights_only=False))
    reward.load_state_dict(saved["reward"])
    trainer.load_state_dict(saved["trainer"])
    torch.set_rng_state(saved["torch_rng"])
    read_checkpoint(run, "buffer.npz", lambda: buffer.load(run.ckpt / "buffer.npz"))
    buffer.next_id = state["next_segment_id"]
    record.next_episode = state["next_episode"]
    agent = read_checkpoint(run, "agent.zip, normalize.npz or replay.pkl", lambda: load_agent(agent, run, cfg))
    log.truncate_after(agent.num_timesteps)
    return agent, state, restore_rng(state["rng"])


def read_checkpoint(run: RunDir, name: str, read: Callable[[], Any]) -> Any:
    """``read()``, with a damaged checkpoint file (cut short by a full disk or a copy that stopped) refused in one
    line that says how to go on. The labels live apart from the checkpoint, in ``labels.sqlite``, and are kept."""
    try:
        return read()
    except (OSError, EOFError, ValueError, KeyError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise CheckpointError(
            f"{run.ckpt}: cannot resume, {name} is damaged ({type(e).__name__}: {e}). The labels in "
            f"{run.labels_path.name} are intact: move {run.ckpt.name}/ aside and run `prefrl train --resume "
            f"{run.path}` again to start the run over from them"
        ) from None


def chunk_steps(cfg: TrainConfig, agent: Any) -> int:
    """Steps per chunk, a whole number of rollouts (default ~1/50 of the run); off-policy agents: of env steps."""
    rollout = getattr(agent, "n_steps", 1) * agent.n_envs
    want = cfg.chunk_steps or cfg.total_timesteps // 50
    return max(rollout, round(want / rollout) * rollout)


def save_agent(agent: Any, run: RunDir) -> None:
    agent.save(run.ckpt / "agent.zip.tmp.zip", exclude=["_update_current_progress_remaining"])
    (run.ckpt / "agent.zip.tmp.zip").replace(run.ckpt / "agent.zip")
    if is_off_policy(agent):  # SB3's own format for its replay buffer (a checkpoint, not a record to keep)
        agent.save_replay_buffer(run.ckpt / "replay.tmp.pkl")
        (run.ckpt / "replay.tmp.pkl").replace(run.ckpt / "replay.pkl")
    norm = agent.get_vec_normalize_env()
    if norm is not None:  # running statistics as plain arrays, beside the agent
        stats = {f"{name}_{k}": getattr(getattr(norm, name), k) for name in ("obs_rms", "ret_rms") for k in _RMS}
        np.savez(run.ckpt / "normalize.tmp.npz", **stats)
        (run.ckpt / "normalize.tmp.npz").replace(run.ckpt / "normalize.npz")


_RMS = ("mean", "var", "count")


def load_agent(agent: Any, run: RunDir, cfg: TrainConfig) -> Any:
    """The agent of ``run``'s checkpoint on ``agent``'s env, with its normalization statistics and replay buffer."""
    loaded = type(agent).load(run.ckpt / "agent.zip", env=agent.get_env(), device=cfg.agent.device)
    loaded.set_logger(configure(None, []))
    restore_normalization(loaded, run)
    if is_off_policy(loaded):
        loaded.load_replay_buffer(run.ckpt / "replay.pkl")
    return loaded


def restore_normalization(agent: Any, run: RunDir) -> None:
    """Put the saved observation and return statistics back into the agent's ``VecNormalize``, if it has one."""
    norm = agent.get_vec_normalize_env()
    if norm is None:
        return
    with np.load(run.ckpt / "normalize.npz") as stats:
        for name in ("obs_rms", "ret_rms"):
            rms = getattr(norm, name)
            rms.mean, rms.var = stats[f"{name}_mean"], stats[f"{name}_var"]
            rms.count = float(stats[f"{name}_count"])


def pin_progress(agent: Any, total_timesteps: int) -> None:
    """SB3 computes schedule progress per ``learn`` call; make it span the whole run instead, so a linear
    learning-rate schedule decays over ``total_timesteps`` even though we learn in chunks."""

    def update(num_timesteps: int, _chunk_total: int) -> None:
        agent._current_progress_remaining = max(0.0, 1.0 - num_timesteps / total_timesteps)

    agent._update_current_progress_remaining = update


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


def check_config(cfg: TrainConfig) -> None:
    """What can be refused before any compute: env id, oracle, sampler/ensemble fit."""
    resolve_env_id(cfg.env.id)
    make_oracle(cfg.oracle, seed=0)
    if cfg.reward_source == "true":
        return
    if cfg.labels.sampler == "disagreement" and cfg.reward.members < 2:
        raise ConfigError("labels.sampler = 'disagreement' needs reward.members ≥ 2; or use 'entropy' or 'uniform'")
    if cfg.labels.total < 1:
        raise ConfigError("labels.total must be ≥ 1 to learn a reward; for the RL baseline set reward_source = 'true'")


def make_eval_env(cfg: TrainConfig) -> VecEnv:
    """One env with the true reward, seeded apart from the training envs."""
    return make_vec_env(type(cfg.env)(**{**cfg.env.__dict__, "n_envs": 1}), seed=cfg.seed + 10_000)
