"""Building the pieces a run needs from its config: vectorized envs, SB3 agents, the reward ensemble and its
trainer, the oracle, and the settings that ``auto`` leaves to the environment (segment length, chunk size,
reward center, share of episode ends).

User mistakes (an unknown env id, an unsupported algorithm or space, an oracle that cannot be built) are caught
here, at the boundary, with a one-line message, before any compute.
"""

from __future__ import annotations

import difflib
import importlib
import math
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor, VecNormalize

from prefrl.config import AgentConfig, ConfigError, EnvConfig, OracleConfig, TrainConfig
from prefrl.data import ComparisonStore
from prefrl.oracles import Oracle, make_teacher
from prefrl.reward import RewardEnsemble, RewardTrainer

TEACHER_KNOBS = ("beta", "gamma", "epsilon", "skip_threshold", "equal_threshold")


def resolve_env_id(env_id: str) -> str:
    """Import ``module:`` prefixes and optional simulator packages; raise a clear error for unknown ids."""
    if ":" in env_id:
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(
                f"env.id: cannot import module '{module}' ({e}); is it installed and on PYTHONPATH?"
            ) from None
    if env_id.startswith("ALE/"):
        try:
            import ale_py

            gym.register_envs(ale_py)
        except ImportError:
            raise ConfigError(f"env.id '{env_id}' needs ale-py: pip install 'prefrl[atari]'") from None
    if env_id.startswith("prefrl/"):
        importlib.import_module("envs")
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"env.id: unknown environment '{env_id}'{hint}")
    entry = gym.registry[env_id]
    if "mujoco" in str(entry.entry_point):
        try:
            importlib.import_module("mujoco")
        except ImportError:
            raise ConfigError(f"env.id '{env_id}' needs MuJoCo: pip install 'prefrl[mujoco]'") from None
    return env_id


def is_atari(env_id: str) -> bool:
    return env_id.split(":")[-1].startswith("ALE/")


def _make_one(cfg: EnvConfig, env_id: str, render_mode: str | None = None) -> gym.Env:
    kwargs: dict[str, Any] = dict(cfg.kwargs)
    if cfg.max_episode_steps:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    if render_mode:
        kwargs["render_mode"] = render_mode
    env = gym.make(env_id, **kwargs)
    if isinstance(env.observation_space, gym.spaces.Dict | gym.spaces.Tuple):
        env = gym.wrappers.FlattenObservation(env)
    check_spaces(env.observation_space, env.action_space, env_id)
    return env


def check_spaces(obs_space: gym.Space, act_space: gym.Space, env_id: str = "env") -> None:
    if not isinstance(obs_space, gym.spaces.Box | gym.spaces.Discrete):
        raise ConfigError(
            f"{env_id}: observation space {obs_space} is not supported; wrap the env so it emits a Box "
            "(e.g. gymnasium.wrappers.FlattenObservation)"
        )
    ok = gym.spaces.Discrete | gym.spaces.Box | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary
    if not isinstance(act_space, ok):
        raise ConfigError(
            f"{env_id}: action space {act_space} is not supported; use Discrete, Box, MultiDiscrete or MultiBinary"
        )


def make_vec_env(cfg: EnvConfig, *, seed: int, render_mode: str | None = None) -> VecEnv:
    """``n_envs`` copies of the env, seeded, under a ``VecMonitor`` (so logged returns are the true ones).

    ALE games (``ALE/...``) have a ``Monitor`` per env instead, and get SB3's Atari preprocessing (84x84 grey,
    max-pooled frame skip, no-op starts, an episode end at every lost life, clipped reward) and ``frame_stack``
    stacked frames, channels first.
    """
    env_id = resolve_env_id(cfg.id)
    if is_atari(env_id):
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack, VecTransposeImage

        env_kwargs, wrapper_kwargs = atari_kwargs(cfg.kwargs)
        venv = make_atari_env(
            env_id,
            n_envs=cfg.n_envs,
            seed=seed,
            env_kwargs=env_kwargs,
            wrapper_kwargs=wrapper_kwargs,
            vec_env_cls=_vec_cls(cfg),
        )
        # Each env has a Monitor below SB3's Atari wrappers, which logs whole games with the unclipped score.
        # No VecMonitor on top: it would count every lost life (an episode end for the agent) as a game.
        return VecTransposeImage(VecFrameStack(venv, n_stack=cfg.frame_stack))
    fns = [lambda: _make_one(cfg, env_id, render_mode) for _ in range(cfg.n_envs)]
    venv = _vec_cls(cfg)(fns)
    venv.seed(seed)
    return VecMonitor(venv)


def atari_kwargs(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``env.kwargs`` of an ALE game split into ``gymnasium.make`` and ``AtariWrapper`` arguments.

    ALE v5 repeats each action for 4 frames by itself, and SB3's ``AtariWrapper`` skips frames too (max-pooling
    the last two, which removes sprite flicker); so the emulator steps single frames and ``frameskip`` (default 4)
    goes to the wrapper.
    """
    env_kwargs = dict(kwargs)
    skip = env_kwargs.pop("frameskip", 4)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ConfigError(f"env.kwargs.frameskip: expected a whole number of frames ≥ 1, got {skip!r}")
    return {**env_kwargs, "frameskip": 1}, {"frame_skip": skip}


def make_atari(env_id: str, kwargs: dict[str, Any], *, render_mode: str | None = None) -> gym.Env:
    """One ALE game with SB3's Atari preprocessing, as each training env has it (without the Monitor)."""
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    env_kwargs, wrapper_kwargs = atari_kwargs(kwargs)
    return AtariWrapper(gym.make(resolve_env_id(env_id), render_mode=render_mode, **env_kwargs), **wrapper_kwargs)


def _vec_cls(cfg: EnvConfig) -> type[VecEnv]:
    return SubprocVecEnv if cfg.vec_env == "subproc" else DummyVecEnv


def env_kind(cfg: EnvConfig) -> str:
    """``atari``, ``mujoco`` or ``classic`` (anything else)."""
    env_id = resolve_env_id(cfg.id)
    if is_atari(env_id):
        return "atari"
    return "mujoco" if "mujoco" in str(gym.registry[env_id].entry_point) else "classic"


def default_segment_length(cfg: EnvConfig) -> int:
    """~1.5 s of simulated time for MuJoCo (a clip a person watches in real time), 25 steps Atari, 50 otherwise.

    The paper's Atari segments were 25 steps. Its MuJoCo segments were 1.5 s of video at a per-task frame rate,
    one frame per step, so 15-60 steps (Hopper 60, Walker2d 45, HalfCheetah 30); set ``segments.length`` to
    reproduce those.
    """
    kind = env_kind(cfg)
    if kind == "atari":
        return 25
    if kind == "mujoco":
        env = gym.make(resolve_env_id(cfg.id), **cfg.kwargs)
        dt = float(env.unwrapped.dt)
        env.close()
        return max(1, round(1.5 / dt))
    return 50


def is_schedule(value: Any) -> bool:
    """``lin_<start>`` in ``agent.kwargs``: a value that decays linearly to 0 over the whole run."""
    return isinstance(value, str) and value.startswith("lin_")


def _schedule(value: Any) -> Any:
    if is_schedule(value):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def _policy_kwargs(value: Any) -> Any:
    """``activation_fn = "ReLU"`` in a TOML file names a ``torch.nn`` activation."""
    if not isinstance(value, dict) or not isinstance(value.get("activation_fn"), str):
        return value
    import torch

    name = value["activation_fn"].removeprefix("nn.")
    fn = getattr(torch.nn, name, None)
    if not (isinstance(fn, type) and issubclass(fn, torch.nn.Module)):
        raise ConfigError(
            f"agent.kwargs.policy_kwargs.activation_fn: '{name}' is not a torch.nn activation (ReLU, Tanh, ...)"
        )
    return {**value, "activation_fn": fn}


def _optimizer_class(value: Any) -> Any:
    """``optimizer_class = "RMSpropTFLike"`` in a TOML file names SB3's TensorFlow-style RMSprop (the tuned A2C
    Atari setting), any other name a ``torch.optim`` optimizer."""
    if not isinstance(value, dict) or not isinstance(value.get("optimizer_class"), str):
        return value
    import torch
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    name = value["optimizer_class"]
    cls = RMSpropTFLike if name == "RMSpropTFLike" else getattr(torch.optim, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(
            f"agent.kwargs.policy_kwargs.optimizer_class: '{name}' is not RMSpropTFLike or a torch.optim optimizer"
        )
    return {**value, "optimizer_class": cls}


def make_agent(cfg: AgentConfig, venv: VecEnv, *, seed: int, tensorboard_log: str | None = None) -> Any:
    """An SB3 (or sb3-contrib) algorithm on ``venv`` (under ``VecNormalize`` with ``cfg.normalize``). On-policy
    ones (PPO, A2C) learn from each rollout once; off-policy ones (SAC, TD3, TQC, DQN) keep a replay buffer,
    which the loop relabels with the current reward after every refit (:func:`prefrl.agents.relabel_replay`)."""
    import stable_baselines3 as sb3
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    algo_cls = getattr(sb3, cfg.algo, None)
    if algo_cls is None:
        try:
            import sb3_contrib

            algo_cls = getattr(sb3_contrib, cfg.algo, None)
        except ImportError:
            if cfg.algo in ("TQC", "TRPO", "ARS", "CrossQ", "QRDQN", "RecurrentPPO", "MaskablePPO"):
                raise ConfigError(f"agent.algo '{cfg.algo}' comes from sb3-contrib: pip install sb3-contrib") from None
    if not (isinstance(algo_cls, type) and issubclass(algo_cls, BaseAlgorithm)):
        known = ["PPO", "A2C", "SAC", "TD3", "DQN"]
        close = difflib.get_close_matches(cfg.algo, [*known, "DDPG", "TQC"], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; use one of {', '.join(known)}"
        raise ConfigError(f"agent.algo: unknown algorithm '{cfg.algo}'{hint}")
    if issubclass(algo_cls, OffPolicyAlgorithm):
        box = isinstance(venv.action_space, gym.spaces.Box)
        if box == (cfg.algo in ("DQN", "QRDQN")):
            need = "discrete actions" if box else "continuous (Box) actions"
            raise ConfigError(
                f"agent.algo: {cfg.algo} needs {need}; this env's actions are {venv.action_space}. Use PPO, which "
                "handles both"
            )
    policy = cfg.policy
    if policy == "auto":
        shape = venv.observation_space.shape or ()
        policy = "CnnPolicy" if len(shape) == 3 and venv.observation_space.dtype == np.uint8 else "MlpPolicy"
    kwargs = {k: _schedule(v) for k, v in cfg.kwargs.items()}
    kwargs["policy_kwargs"] = _optimizer_class(_policy_kwargs(kwargs.get("policy_kwargs")))
    if cfg.normalize:  # the returns it normalizes by are discounted as the agent discounts them
        venv = VecNormalize(venv, gamma=float(cfg.kwargs.get("gamma", 0.99)))
    try:
        return algo_cls(
            policy, venv, seed=seed, device=cfg.device, verbose=0, tensorboard_log=tensorboard_log, **kwargs
        )
    except TypeError as e:
        raise ConfigError(f"agent.kwargs: {cfg.algo} rejected the hyperparameters ({e})") from None


def segment_length(cfg: TrainConfig) -> int:
    """Steps per segment: ``cfg.segments.length``, or the env's default when that is 0."""
    return cfg.segments.length or default_segment_length(cfg.env)


def make_oracle(cfg: OracleConfig, *, seed: int, labels_path: Path | None = None) -> Oracle:
    """The oracle ``cfg`` names. ``human`` queues questions in the label store at ``labels_path`` for the web
    labeler (``prefrl label RUN``); without a path its queue is in memory, which only checks that it can be built.
    ``replay`` imports ``cfg.replay_file`` (an npz export) into the store at ``labels_path``."""
    if cfg.kind == "human":  # refuses, with the install command, when the labeler extra is missing
        from prefrl.oracles import HumanOracle

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


def reward_center(cfg: TrainConfig) -> str:
    """``cfg.reward.center``, with ``auto`` settled for Atari: the mean, as the paper. A game over is rare and a
    game long, so with the game-over state as the zero most of an A2C agent's reward spread would be a constant
    per step. Elsewhere ``auto`` stays, for :func:`prefrl.reward.normalize.normalize` to pick the absorbing state
    once an episode ended."""
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


def chunk_steps(cfg: TrainConfig, agent: Any) -> int:
    """Steps per chunk, a whole number of rollouts (default ~1/50 of the run); off-policy agents: of env steps."""
    rollout = getattr(agent, "n_steps", 1) * agent.n_envs
    want = cfg.chunk_steps or cfg.total_timesteps // 50
    return max(rollout, round(want / rollout) * rollout)


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
