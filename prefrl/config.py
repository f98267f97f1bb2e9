"""Every knob of a run, as one tree of dataclasses.

An experiment is a small TOML file naming only what differs from these defaults; ``--set key=value``
overrides any field on the command line (``--set labels.total=500``). The resolved tree is saved
with every run as ``config.toml``. A misspelt key, a wrong type or an out-of-range value is refused
before any compute, with a one-line message and a suggestion.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says what and how to fix it."""


class CheckpointError(ConfigError):
    """A run's checkpoint cannot be read back; the message names the file and how to go on."""


@dataclass
class EnvConfig:
    """The environment the agent acts in, and how many copies of it run side by side."""

    id: str = "CartPole-v1"
    """Gymnasium id; a ``module:Id`` form imports ``module`` first (to register custom envs)."""
    n_envs: int = 8
    """Copies of the env stepped together (one vectorized env); every copy's steps count in ``total_timesteps``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Passed to ``gymnasium.make``."""
    max_episode_steps: int = 0
    """Override the env's time limit (0 keeps the registered one)."""
    vec_env: str = "dummy"
    """``dummy`` (one process) or ``subproc`` (one process per env)."""
    frame_stack: int = 4
    """Atari only: frames stacked per observation."""


@dataclass
class SegmentConfig:
    """How the agent's experience is cut into the segments that queries compare."""

    length: int = 0
    """Steps per segment; 0 picks by env kind: 50 classic control, ~1.5 s of sim time MuJoCo, 25 Atari."""
    buffer_size: int = 4000
    """Most recent segments kept as query candidates."""


@dataclass
class RewardConfig:
    """The learned reward: an ensemble of networks fit to the comparisons, and what the agent sees of it."""

    members: int = 3
    """Ensemble size K; each member trains on its own bootstrap resample of the comparisons."""
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    """Hidden layer widths of the ``mlp`` model (the ``cnn`` model's fully connected layer is 64 wide)."""
    model: str = "auto"
    """``mlp`` over (obs, action), ``cnn`` over image obs, or ``auto``."""
    use_action: str = "auto"
    """``yes``, ``no`` or ``auto`` (yes for mlp, no for cnn, as in the paper)."""
    dropout: float = 0.5
    """Dropout probability on the ``cnn`` model's convolutional layers (the ``mlp`` model has none)."""
    standardize_inputs: bool = False
    """``mlp`` model: feed each input (observation and action feature) as ``(x - mean) / std``, with the mean and
    std over the steps of the segments the first fit compares (random play, before RL), fixed for the run. Under
    the L2 penalty a feature with a narrow range (a robot's height, a joint angle) otherwise costs large weights
    to use, next to wide-ranging velocities."""
    lr: float = 1e-3
    """Adam learning rate of the reward networks."""
    batch_size: int = 64
    """Comparisons per member per gradient step."""
    epsilon: float = 0.1
    """Probability that an answer is uniformly random (label-noise mixture in the loss)."""
    val_fraction: float = 1 / math.e
    """Share of comparisons held out for validation (chosen by a stable hash of the query id), used to adapt ``l2``."""
    l2: float = 1e-3
    """Initial L2 coefficient; adapted to keep val/train loss in ``l2_bounds``."""
    l2_bounds: list[float] = field(default_factory=lambda: [1.1, 1.5])
    """``[low, high]``: after each epoch ``l2`` grows if val/train loss is above ``high``, shrinks if below ``low``."""
    initial_epochs: int = 100
    """Epochs of the first fit, on the labels asked before RL starts."""
    epochs: int = 10
    """Epochs of every later fit."""
    min_steps: int = 50
    """At least this many gradient steps per fit (small label sets)."""
    max_labels: int = 0
    """Fit on the most recent N comparisons only (0 = all; the paper's Atari runs keep 3000)."""
    center: str = "auto"
    """Zero of the agent's reward: ``absorbing`` (the state after termination pays 0), ``mean``, or ``auto``
    (Atari: mean, as the paper; elsewhere absorbing once a terminated segment was seen, else mean)."""
    norm_on: str = "recent"
    """Steps the zero and spread are measured on, after every refit: ``recent`` (the last 1,000 segments the agent
    played), ``labeled`` (every segment a comparison so far showed, random play included) or ``first`` (those of
    the first fit, and never again: the agent's reward keeps the scale it had when RL started)."""
    std: float = 1.0
    """Spread of each member's reward the agent sees, around that zero. The paper used 0.05 on Atari, about the
    spread of clipped game rewards, so RL hyperparameters tuned on those still fit. Around an ``absorbing`` zero
    a reward's constant part counts as spread: for an agent that does not rescale rewards (A2C on Atari), use
    ``mean``, so that all of ``std`` tells steps apart."""
    blank: list[list[int]] = field(default_factory=list)
    """Image observations: rectangles ``[top, bottom, left, right]`` (pixels of one frame, bottom and right
    exclusive) the reward model sees as black, in every stacked frame. The paper hid each Atari game's score this
    way, so the model cannot read the reward off the screen. The agent still sees the whole frame."""


@dataclass
class LabelConfig:
    """How many comparisons are asked, when, and which segments they compare."""

    total: int = 200
    """Label budget of the whole run."""
    initial_fraction: float = 0.25
    """Fraction asked about random-policy segments before RL starts."""
    t0: float = 0.0
    """Label rate ∝ t0 / (T + t0); 0 means total_timesteps / 4."""
    sampler: str = "disagreement"
    """``uniform``, ``disagreement`` (ensemble variance of the preference) or ``entropy``."""
    candidates: int = 10
    """Disagreement/entropy: draw this many times more candidate pairs than queries."""
    ends_share: float | str = "auto"
    """Share of candidate queries that include a segment where an episode ended, when any exist. ``auto``: 0.5,
    but 0 on Atari, where an episode ends at a game over or a lost life, to the oracle an ordinary lost point."""
    k: int = 2
    """Segments per query (2 = pairs)."""
    max_pending: int = 50
    """Asynchronous oracles: pause the agent when this many queries are unanswered."""


@dataclass
class OracleConfig:
    """Who answers the queries. The teacher knobs apply to the ``synthetic`` oracle; one set explicitly overrides
    the ``teacher`` preset's value."""

    kind: str = "synthetic"
    """``synthetic`` (a simulated teacher comparing true returns), ``human`` (people answer in the web labeler,
    ``prefrl label``) or ``replay`` (answers imported from an exported label file)."""
    teacher: str = "oracle"
    """B-Pref teacher preset: oracle, stoc, mistake, noisy, skip, myopic, equal."""
    beta: float = math.inf
    """Rationality: ``inf`` always picks the better segment; a finite value samples from
    ``softmax(beta * return / scale)``, ``scale`` being the running mean |segment return|."""
    gamma: float = 1.0
    """Myopia: step ``t`` of a ``T``-step segment weighs ``gamma ** (T - 1 - t)``, so later steps count more; 1 weighs
    every step equally."""
    epsilon: float = 0.0
    """Probability that an answer is replaced by another choice, uniformly (a mistake)."""
    skip_threshold: float = -math.inf
    """Relative to the mean |segment return|; -inf never skips."""
    equal_threshold: float = 0.0
    """Relative return gap at or below which the best two segments tie (0: only exactly equal returns tie)."""
    replay_file: str = ""
    """``kind = "replay"``: the ``.npz`` file written by ``prefrl export`` whose comparisons the run learns from."""
    overrides: list[str] = field(default_factory=list)
    """Internal: which teacher knobs were set explicitly (filled by the loader)."""


@dataclass
class AgentConfig:
    """The RL agent that optimizes the learned reward (the same settings train the true-reward baseline)."""

    algo: str = "PPO"
    """Any Stable-Baselines3 on-policy algorithm (PPO, A2C)."""
    policy: str = "auto"
    """Stable-Baselines3 policy name; ``auto`` picks ``CnnPolicy`` for image observations, else ``MlpPolicy``."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Hyperparameters passed to the algorithm; ``lin_X`` strings are linear schedules from X to 0."""
    device: str = "cpu"
    """Torch device of the agent (``cpu``, ``cuda``, ...); the reward model stays on the CPU."""
    relabel: bool = True
    """Off-policy agents: pay every transition in the replay buffer the current reward after each refit (PEBBLE);
    ``false`` keeps the reward each was paid when collected (an ablation)."""
    normalize: bool = False
    """Normalize the observations and rewards the agent sees with running statistics (SB3 ``VecNormalize``,
    rl-baselines3-zoo's ``normalize: true``); the reward model and the logged returns see the raw ones."""


@dataclass
class TrainConfig:
    """One run: the top-level keys of an experiment file, and its sections."""

    name: str = "run"
    """Names the run: ``prefrl train`` writes to ``runs/NAME-DATE-TIME`` unless ``--run-dir`` is given."""
    task: str = ""
    """What the labelers should reward, in one sentence (shown to people)."""
    reward_source: str = "learned"
    """``learned`` (from preferences), ``true`` (the env's reward, the RL baseline) or ``frozen`` (the final
    learned reward of the run ``reward_from``, unchanged; no labels are asked)."""
    reward_from: str = ""
    """With ``reward_source = "frozen"``: the directory of a preference run. A fresh agent trained on its final
    reward tells whether that reward, once learned, teaches the task (the usual test of a learned reward)."""
    total_timesteps: int = 100_000
    """Agent steps of the whole run, over all ``env.n_envs`` copies (on Atari, agent steps of 4 frames each)."""
    chunk_steps: int = 0
    """Agent steps between label rounds; 0 = 1/50 of total_timesteps, rounded to whole rollouts."""
    seed: int = 0
    """Seeds the environments, the agent, the reward model, the sampler and the synthetic oracle."""
    eval_episodes: int = 20
    """Episodes of the policy on the true reward at the end of the run (0: no evaluation)."""
    eval_every: int = 0
    """Also evaluate (``eval_episodes`` episodes, true reward) every this many steps (0: at the end)."""
    eval_policy: str = "auto"
    """How the evaluated policy acts: ``deterministic`` (its most likely action), ``stochastic`` (sampled, as in
    training), or ``auto``: stochastic on Atari, as rl-baselines3-zoo scores Atari agents (an argmax policy can
    stall there, e.g. a paddle that never moves in time), deterministic elsewhere."""
    baseline: bool = False
    """Also train the same agent on the true reward and plot both."""
    env: EnvConfig = field(default_factory=EnvConfig)
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


# The run `prefrl train` makes with no experiment file: CartPole learned from 100 synthetic labels,
# beside PPO on the true reward. Hyperparameters are the well-known tuned PPO ones for CartPole.
QUICKSTART: dict[str, Any] = {
    "name": "quickstart-cartpole",
    "task": "keep the pole upright for as long as possible",
    "total_timesteps": 100_000,
    "baseline": True,
    "labels": {"total": 100},
    "agent": {
        "algo": "PPO",
        "kwargs": {
            "n_steps": 32,
            "batch_size": 256,
            "gae_lambda": 0.8,
            "gamma": 0.98,
            "n_epochs": 20,
            "ent_coef": 0.0,
            "learning_rate": "lin_0.001",
            "clip_range": "lin_0.2",
        },
    },
}

_CHOICES = {
    ("env", "vec_env"): ("dummy", "subproc"),
    ("reward", "model"): ("auto", "mlp", "cnn"),
    ("reward", "use_action"): ("auto", "yes", "no"),
    ("reward", "center"): ("auto", "absorbing", "mean"),
    ("reward", "norm_on"): ("recent", "labeled", "first"),
    ("labels", "sampler"): ("uniform", "disagreement", "entropy"),
    ("oracle", "kind"): ("synthetic", "replay", "human"),
    ("reward_source",): ("learned", "true", "frozen"),
    ("eval_policy",): ("auto", "deterministic", "stochastic"),
}


def _check_ranges(cfg: TrainConfig) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"config: {key} = {_get(cfg, key.split('.'))!r} {what}")

    for path, choices in _CHOICES.items():
        value = _get(cfg, list(path))
        if value not in choices:
            raise ConfigError(f"config: {'.'.join(path)} = {value!r} is not one of {', '.join(choices)}")
    need(
        (cfg.reward_source == "frozen") == bool(cfg.reward_from),
        "reward_from",
        "goes with reward_source = 'frozen' and only with it: name the preference run whose reward to train on",
    )
    need(cfg.total_timesteps > 0, "total_timesteps", "must be positive")
    need(cfg.chunk_steps >= 0, "chunk_steps", "must be ≥ 0")
    need(cfg.eval_episodes >= 0, "eval_episodes", "must be ≥ 0")
    need(cfg.eval_every >= 0, "eval_every", "must be ≥ 0 (0 = evaluate at the end only)")
    need(cfg.env.n_envs >= 1, "env.n_envs", "must be ≥ 1")
    need(cfg.segments.length >= 0, "segments.length", "must be ≥ 0 (0 = pick by env kind)")
    need(cfg.segments.buffer_size >= 2, "segments.buffer_size", "must be ≥ 2")
    need(cfg.reward.members >= 1, "reward.members", "must be ≥ 1")
    need(all(h >= 1 for h in cfg.reward.hidden), "reward.hidden", "must be positive layer widths")
    need(0 <= cfg.reward.dropout < 1, "reward.dropout", "must be in [0, 1)")
    need(cfg.reward.lr > 0, "reward.lr", "must be positive")
    need(cfg.reward.batch_size >= 1, "reward.batch_size", "must be ≥ 1")
    need(0 <= cfg.reward.epsilon < 1, "reward.epsilon", "must be in [0, 1)")
    need(0 <= cfg.reward.val_fraction < 1, "reward.val_fraction", "must be in [0, 1)")
    need(cfg.reward.l2 >= 0, "reward.l2", "must be ≥ 0")
    lo_hi = cfg.reward.l2_bounds
    need(len(lo_hi) == 2 and 0 < lo_hi[0] <= lo_hi[1], "reward.l2_bounds", "must be [low, high] with 0 < low ≤ high")
    need(cfg.reward.initial_epochs >= 0 and cfg.reward.epochs >= 0, "reward.epochs", "must be ≥ 0")
    need(cfg.reward.max_labels >= 0, "reward.max_labels", "must be ≥ 0")
    need(cfg.reward.std > 0, "reward.std", "must be positive")
    need(
        all(len(r) == 4 and 0 <= r[0] < r[1] and 0 <= r[2] < r[3] for r in cfg.reward.blank),
        "reward.blank",
        "must be rectangles [top, bottom, left, right] with top < bottom and left < right",
    )
    need(cfg.labels.total >= 0, "labels.total", "must be ≥ 0")
    need(0 <= cfg.labels.initial_fraction <= 1, "labels.initial_fraction", "must be in [0, 1]")
    need(cfg.labels.t0 >= 0, "labels.t0", "must be ≥ 0")
    need(cfg.labels.candidates >= 1, "labels.candidates", "must be ≥ 1")
    need(cfg.labels.k >= 2, "labels.k", "must be ≥ 2")
    share = cfg.labels.ends_share
    need(
        share == "auto" if isinstance(share, str) else 0 <= share <= 1,
        "labels.ends_share",
        "must be in [0, 1] or 'auto'",
    )
    need(cfg.oracle.beta > 0, "oracle.beta", "must be positive (inf = always the better segment)")
    need(0 < cfg.oracle.gamma <= 1, "oracle.gamma", "must be in (0, 1]")
    need(0 <= cfg.oracle.epsilon <= 1, "oracle.epsilon", "must be in [0, 1]")
    need(cfg.oracle.equal_threshold >= 0, "oracle.equal_threshold", "must be ≥ 0")
    if cfg.oracle.kind == "replay" and not cfg.oracle.replay_file:
        raise ConfigError("config: oracle.kind = 'replay' needs oracle.replay_file (an exported label file)")


def _get(obj: Any, path: list[str]) -> Any:
    for p in path:
        obj = getattr(obj, p)
    return obj


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and gently coerce) a TOML value against a dataclass field type."""
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        return True, float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is str:
        if isinstance(value, bool):  # `--set reward_source=true` reads as TOML true; the text is what was meant
            return True, "true" if value else "false"
        return isinstance(value, str), value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, v = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is dict:
        return isinstance(value, dict), value
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a)[0] for a in typing.get_args(tp)), value
    return True, value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def merge_layer(obj: Any, data: dict[str, Any], prefix: str, explicit: list[str]) -> None:
    """Set the keys of ``data`` (a TOML table, names under ``prefix``) on the dataclass ``obj``, checked and
    converted to each field's type; the names set are appended to ``explicit``."""
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj) if f.name != "overrides"]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"config: unknown key '{full}'{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config: '{full}' is a section; write [{full}] with keys under it")
            merge_layer(current, value, f"{full}.", explicit)
            continue
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(
                f"config: '{full}' must be {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )
        setattr(obj, key, coerced)
        explicit.append(full)


def parse_override(text: str) -> dict[str, Any]:
    """``"labels.total=500"`` → ``{"labels": {"total": 500}}`` (the value is read as TOML, else as a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set labels.total=500")
    key, raw = text.split("=", 1)
    key, raw = key.strip(), raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, base: dict | None = None
) -> TrainConfig:
    """Defaults ← ``base`` (default: the quickstart when no file is given) ← TOML file ← ``--set`` overrides."""
    cfg = TrainConfig()
    explicit: list[str] = []
    layers: list[dict[str, Any]] = []
    if base is not None:
        layers.append(base)
    elif path is None:
        layers.append(QUICKSTART)
    if path is not None:
        layers.append(read_toml(Path(path), "config", "experiment file"))
    layers.extend(parse_override(o) for o in overrides)
    for layer in layers:
        oracle = layer.get("oracle")
        if isinstance(oracle, dict) and "overrides" in oracle:
            # A run's saved config.toml, used as an experiment file: it spells out every oracle key, and lists
            # which of them were set explicitly (the rest came from the teacher's preset and stay presets).
            layer = {**layer, "oracle": {k: v for k, v in oracle.items() if k != "overrides"}}
            merge_layer(cfg, layer, "", [])
            explicit.extend(f"oracle.{k}" for k in oracle["overrides"])
            continue
        merge_layer(cfg, layer, "", explicit)
    cfg.oracle.overrides = sorted({k.split(".", 1)[1] for k in explicit if k.startswith("oracle.")})
    _check_ranges(cfg)
    return cfg


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_toml(path: Path, who: str, what: str) -> dict[str, Any]:
    """The TOML file at ``path``; a missing or malformed file is refused in one line that starts ``who:``."""
    if not path.is_file():
        raise ConfigError(f"{who}: no such {what} '{path}'")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{who}: {path} is not valid TOML ({e})") from None


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Inverse of :func:`to_dict` (a saved ``config.toml``)."""
    return load_config(base=data)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(dumps_config(cfg))


def dumps_config(cfg: TrainConfig) -> str:
    """The TOML of a run's ``config.toml``."""
    return tomli_w.dumps(toml_safe(to_dict(cfg)))


# Keys added after runs were first saved, with the value that gives a run saved before the key existed the
# behaviour it started with. A saved config spells out every key it knew, so a key it lacks takes this value,
# not today's default: a resumed run never changes behaviour because a default did.
SINCE: dict[tuple[str, ...], Any] = {
    ("reward", "norm_on"): "recent",
    ("agent", "relabel"): True,
}


def loads_config(text: str) -> TrainConfig:
    """Inverse of :func:`dumps_config`; a key the saved config lacks takes its value from before the key existed
    (:data:`SINCE`)."""
    data = tomllib.loads(text)
    for path, value in SINCE.items():
        *parents, key = path
        section = data
        for p in parents:
            section = section.setdefault(p, {})
        section.setdefault(key, value)
    return from_dict(data)


def toml_safe(d: Any) -> Any:
    """A copy of the nested dicts and lists of ``d``, as given to ``tomli_w``."""
    if isinstance(d, dict):
        return {k: toml_safe(v) for k, v in d.items()}
    if isinstance(d, list):
        return [toml_safe(v) for v in d]
    return d
