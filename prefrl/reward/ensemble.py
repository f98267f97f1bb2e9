"""RewardEnsemble: K reward nets r_k(o, a) evaluated together, with per-member normalization.

Raw space: the absorbing state after a termination has reward exactly 0, so a segment's raw return is
``sum_t mask_t * r_k(o_t, a_t)``; raw returns are the logits of the preference loss.

Normalized space: ``(r_k - shift_k) / scale_k``, an affine map of the whole reward function (absorbing
state included, where it is ``-shift_k / scale_k``). With ``center="absorbing"`` the shift is 0, so the
absorbing state stays at exactly 0 and surviving (or ending) keeps the sign the labels gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from prefrl.data import Segment
from prefrl.reward.nets import EnsembleCNN, EnsembleMLP, SpaceEncoder

MLP_CHUNK = 1 << 16  # steps per forward chunk (per member) when predicting many steps
CNN_CHUNK = 512


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """Net inputs of S segments padded to T steps, computed once per fit.

    ``x``: ``(S, T, d)`` float (mlp) or ``(S, T, C, H, W)`` uint8 (cnn); ``a``: ``(S, T, d_act)`` or None;
    ``mask``: ``(S, T)`` 1 on real steps, 0 on absorbing padding.
    """

    x: torch.Tensor
    a: torch.Tensor | None
    mask: torch.Tensor

    @property
    def T(self) -> int:
        return self.mask.shape[1]


class RewardEnsemble(nn.Module):
    """K reward nets r_k(o, a) as one batched module (see the module docstring for raw vs normalized).

    Args:
        observation_space, action_space: the env's spaces (Box vector or uint8 image obs; Box, Discrete,
            MultiDiscrete or MultiBinary actions).
        members: ensemble size K.
        hidden: MLP hidden sizes (the CNN's FC layer is 64 wide, as in the paper).
        model: ``"auto"`` (cnn for image obs, else mlp), ``"mlp"`` or ``"cnn"``.
        use_action: feed actions to the net; default True for mlp, False for cnn (as in the paper).
        dropout: dropout probability on the CNN's conv layers.
        blank: rectangles ``[top, bottom, left, right]`` of image frames the model sees as zeros (e.g. an Atari
            game's score, which would give the reward away); the agent's own observations are not touched.
        standardize: (mlp) feed each input feature as ``(x - mean) / std``, with the mean and std that
            :meth:`set_input_normalization` takes from a sample of steps (identity until then).
        seed: seeds the initial weights.
    """

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        members: int = 3,
        hidden: Sequence[int] = (64, 64),
        model: str = "auto",
        use_action: bool | None = None,
        dropout: float = 0.5,
        blank: Sequence[Sequence[int]] = (),
        standardize: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        if model not in ("auto", "mlp", "cnn"):
            raise ValueError(f"model must be 'auto', 'mlp' or 'cnn', got {model!r}")
        self.obs_encoder = SpaceEncoder.of(observation_space, role="observation", blank=blank)
        image = self.obs_encoder.kind == "image"
        if model == "auto":
            model = "cnn" if image else "mlp"
        if model == "cnn" and not image:
            raise ValueError(
                "model='cnn' needs uint8 image observations (C, H, W) or (H, W, C) in [0, 255]; "
                f"got {observation_space}; use model='mlp'"
            )
        self.model = model
        self.use_action = (model == "mlp") if use_action is None else bool(use_action)
        self.act_encoder = SpaceEncoder.of(action_space, role="action") if self.use_action else None
        if standardize and model != "mlp":
            raise ValueError("standardize applies to the mlp model's inputs; the cnn normalizes with batch norm")
        self.standardize = standardize
        self.members = members
        d_act = self.act_encoder.dim if self.act_encoder else 0
        if model == "mlp":  # the standardization of the net's inputs; identity until set_input_normalization
            self.register_buffer("in_shift", torch.zeros(self.obs_encoder.dim + d_act))
            self.register_buffer("in_scale", torch.ones(self.obs_encoder.dim + d_act))
        g = torch.Generator().manual_seed(seed)
        if model == "mlp":
            self.net: nn.Module = EnsembleMLP(members, self.obs_encoder.dim + d_act, tuple(hidden), generator=g)
        else:
            self.net = EnsembleCNN(members, self.obs_encoder.image_shape, d_act, dropout=dropout, generator=g)
        self.register_buffer("shift", torch.zeros(members))  # (K,)
        self.register_buffer("scale", torch.ones(members))  # (K,)
        self._tracked = [*self.net.parameters(), self.shift, self.scale]  # their versions key the numpy cache
        self._np_key: tuple[int, ...] | None = None
        self._np_cache: tuple | None = None

    def _apply(self, fn, *args, **kwargs):  # .to() / .double() may replace tensors: track the new ones
        out = super()._apply(fn, *args, **kwargs)
        self._tracked = [*self.net.parameters(), self.shift, self.scale]
        self._np_key = None
        return out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A model saved before its inputs could be standardized loads with the identity standardization.
        for name, fill in (("in_shift", torch.zeros_like), ("in_scale", torch.ones_like)):
            if hasattr(self, name) and prefix + name not in state_dict:
                state_dict[prefix + name] = fill(getattr(self, name))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- features -----------------------------------------------------------------------------
    def set_input_normalization(self, obs: np.ndarray, actions: np.ndarray | None) -> None:
        """With ``standardize``: take each mlp input's mean and std from a sample of steps ``(N, *obs_shape)``,
        ``(N, *act_shape)``. A feature constant over the sample keeps its scale (std 1)."""
        if not self.standardize:
            raise ValueError("this reward model does not standardize its inputs (standardize=False)")
        if len(obs) < 2:
            raise ValueError(f"set_input_normalization needs at least 2 steps, got {len(obs)}")
        x = self._raw_features(obs, actions)[0].astype(np.float64)
        mean, std = x.mean(0), x.std(0)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise FloatingPointError("observations or actions have NaN/inf values; cannot standardize the inputs")
        self.in_shift.copy_(torch.from_numpy(mean))
        self.in_scale.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)))

    def _np_features(self, obs: np.ndarray, actions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Steps -> ``(N, d)`` float32 (mlp, standardized if ``standardize``) or
        ``((N, C, H, W) uint8, (N, d_act) | None)`` (cnn)."""
        x, a = self._raw_features(obs, actions)
        if self.standardize:
            x = (x - self.in_shift.numpy()) / self.in_scale.numpy()
            x = x.astype(np.float32, copy=False)
        return x, a

    def _raw_features(self, obs: np.ndarray, actions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = self.obs_encoder(obs)
        if self.model == "mlp" and self.obs_encoder.kind == "image":
            x = x.reshape(len(x), -1).astype(np.float32) / 255.0
        a = None
        if self.act_encoder is not None:
            if actions is None:
                raise ValueError("this reward model uses actions; pass them")
            a = self.act_encoder(actions)
            if len(a) != len(x):
                raise ValueError(f"got {len(x)} observations but {len(a)} actions")
        if self.model == "mlp":
            return (np.concatenate([x, a], axis=1) if a is not None else x), None
        return x, a

    def features(self, obs: np.ndarray, actions: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Steps ``(N, *obs_shape)``, ``(N, *act_shape)`` -> net inputs ``(x, a)`` as tensors (see :meth:`forward`)."""
        x, a = self._np_features(obs, actions)
        return torch.from_numpy(x), None if a is None else torch.from_numpy(a)

    def forward(
        self, x: torch.Tensor, a: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw member rewards ``(K, N)`` from features of N steps, shared ``(N, ...)`` or per member ``(K, N, ...)``."""
        if self.model == "mlp":
            return self.net(x)
        return self.net(x, a, generator=generator)

    def weight_matrices(self) -> list[torch.Tensor]:
        """The tensors the trainer's L2 penalty covers (weights and conv kernels, not biases or norms)."""
        return self.net.weight_matrices()

    @property
    def chunk_steps(self) -> int:
        """Steps per member per forward when evaluating (or accumulating gradients over) many steps."""
        return MLP_CHUNK if self.model == "mlp" else CNN_CHUNK

    def _raw_steps(self, obs: np.ndarray, actions: np.ndarray | None) -> torch.Tensor:
        """Raw rewards ``(K, N)`` of N steps, in chunks; respects the current mode and grad setting."""
        n, c = len(obs), self.chunk_steps
        outs = []
        for s in range(0, max(n, 1), c):
            x, a = self.features(obs[s : s + c], None if actions is None else actions[s : s + c])
            outs.append(self(x, a))  # (K, n_chunk)
        return torch.cat(outs, dim=1)

    # -- per-step rewards for RL --------------------------------------------------------------
    def _numpy_net(self) -> tuple:
        # The MLP is cached as numpy arrays, refreshed whenever a parameter or buffer changed in place
        # (optimizer steps, load_state_dict and set_normalization bump the tensors' version counters).
        key = tuple(t._version for t in self._tracked)
        if key != self._np_key:
            shift = self.shift.detach().numpy().astype(np.float32)[:, None]  # (K, 1)
            inv = (1.0 / self.scale.detach().numpy().astype(np.float32))[:, None]  # (K, 1)
            self._np_cache, self._np_key = (self.net.to_numpy(), shift, inv), key
        return self._np_cache

    def step_rewards(self, obs: np.ndarray, actions: np.ndarray | None, *, fast: bool = True) -> np.ndarray:
        """Normalized rewards ``(K, N)`` float32 of N steps ``(N, *obs_shape)``, ``(N, *act_shape)``; eval, no grad.

        ``fast``: for MLPs, use the numpy path (same function as the torch forward, to float32 precision).
        """
        if fast and self.model == "mlp":
            net, shift, inv = self._numpy_net()
            x, _ = self._np_features(obs, actions)
            r = net(x)  # (K, N)
            r -= shift
            r *= inv
            return r
        with torch.no_grad(), _eval(self):
            r = self._raw_steps(obs, actions)  # (K, N)
            return ((r - self.shift[:, None]) / self.scale[:, None]).numpy()

    def predict(self, obs: np.ndarray, actions: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(N,)`` and std ``(N,)`` (over members, ddof 0) of the normalized reward of N steps."""
        r = self.step_rewards(obs, actions)  # (K, N)
        return r.mean(0), r.std(0)

    @torch.no_grad()
    def set_normalization(
        self, obs: np.ndarray, actions: np.ndarray | None, *, center: str = "mean", std: float = 1.0
    ) -> dict[str, float]:
        """Set per-member shift and scale from a sample of real steps ``(N, *obs_shape)``, ``(N, *act_shape)``.

        ``shift_k`` is the mean of r_k over the sample (``center="mean"``) or 0 (``center="absorbing"``, which
        keeps a terminated episode's absorbing state at exactly 0); ``scale_k`` the root mean square of
        ``r_k - shift_k`` (the std, when centred on the mean) divided by ``std``, the spread the agent then sees.
        """
        if center not in ("mean", "absorbing"):
            raise ValueError(f"center must be 'mean' or 'absorbing', got {center!r}")
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        if len(obs) < 2:
            raise ValueError(f"set_normalization needs at least 2 steps, got {len(obs)}")
        with _eval(self):
            r = self._raw_steps(obs, actions).double()  # (K, N)
        mean = r.mean(1)
        if not torch.isfinite(r).all():
            raise FloatingPointError("reward model gave NaN/inf rewards on the normalization sample; check obs/actions")
        shift = mean if center == "mean" else torch.zeros_like(mean)
        # Spread around the zero point: the std when centred on the mean; with the absorbing state as zero,
        # the root mean square, so a reward that is nearly constant but far from 0 is not blown up.
        scale = (r - shift[:, None]).pow(2).mean(1).sqrt()
        self.shift.copy_(shift)
        self.scale.copy_((scale / std).clamp_min(1e-6))
        return {
            "reward/norm_shift": float(self.shift.mean()),
            "reward/norm_scale": float(self.scale.mean()),
            "reward/raw_mean": float(mean.mean()),
        }

    # -- segments -----------------------------------------------------------------------------
    def segment_returns(
        self, obs: np.ndarray, actions: np.ndarray | None, mask: np.ndarray, normalized: bool
    ) -> torch.Tensor:
        """Returns ``(K, B)`` of B segments ``(B, T, *obs_shape)``, ``(B, T, *act_shape)``, mask ``(B, T)``.

        Raw: ``sum_t mask_t r_k``. Normalized: ``(raw - T * shift_k) / scale_k`` (the absorbing state counts
        as ``-shift_k / scale_k``). Only real steps (mask > 0) are evaluated. Respects grad mode and train/eval.
        """
        mask = np.asarray(mask, dtype=np.float32)
        B, T = mask.shape
        b_idx, t_idx = np.nonzero(mask)  # real steps only
        r = self._raw_steps(obs[b_idx, t_idx], None if actions is None else actions[b_idx, t_idx])  # (K, n_real)
        w = torch.from_numpy(mask[b_idx, t_idx])  # (n_real,)
        out = torch.zeros(self.members, B, dtype=r.dtype).index_add(1, torch.from_numpy(b_idx), r * w)  # (K, B)
        if normalized:
            out = (out - T * self.shift[:, None]) / self.scale[:, None]
        return out

    def returns_of(self, segments: Sequence[Segment]) -> np.ndarray:
        """Raw returns ``(K, B)`` (the loss's logits) of a list of segments (any lengths); eval, no grad."""
        if not segments:
            return np.zeros((self.members, 0), dtype=np.float32)
        obs = np.concatenate([s.obs[: s.length] for s in segments])  # (n_real, *obs_shape)
        acts = np.concatenate([s.actions[: s.length] for s in segments]) if self.use_action else None
        owner = np.repeat(np.arange(len(segments)), [s.length for s in segments])  # (n_real,)
        with torch.no_grad(), _eval(self):
            r = self._raw_steps(obs, acts)  # (K, n_real)
            out = torch.zeros(self.members, len(segments), dtype=r.dtype).index_add(1, torch.from_numpy(owner), r)
        return out.numpy()

    def preference_probs(self, segments_a: Sequence[Segment], segments_b: Sequence[Segment]) -> np.ndarray:
        """``(K, n)`` P(a_i preferred to b_i) per member (Bradley-Terry on raw returns, no epsilon).

        Segments shared between pairs are evaluated once (by ``Segment.id``).
        """
        if len(segments_a) != len(segments_b):
            raise ValueError(f"got {len(segments_a)} segments_a but {len(segments_b)} segments_b")
        unique: dict[int, int] = {}
        segs: list[Segment] = []
        for s in (*segments_a, *segments_b):
            if s.id not in unique:
                unique[s.id] = len(segs)
                segs.append(s)
        R = self.returns_of(segs).astype(np.float64)  # (K, U)
        ia = np.array([unique[s.id] for s in segments_a], dtype=np.int64)
        ib = np.array([unique[s.id] for s in segments_b], dtype=np.int64)
        d = R[:, ia] - R[:, ib]  # (K, n)
        return 0.5 * (1.0 + np.tanh(0.5 * d))  # sigmoid, stable for large |d|

    def feature_bank(self, segments: Sequence[Segment]) -> FeatureBank:
        """Net inputs of segments padded to the longest T; padding repeats the last real step (masked out)."""
        T = max(s.T for s in segments)
        obs, acts, mask = [], [], np.zeros((len(segments), T), dtype=np.float32)
        for i, s in enumerate(segments):
            keep = np.minimum(np.arange(T), s.length - 1)  # (T,) steps >= length repeat the last real one
            obs.append(s.obs[keep])
            if self.use_action:
                acts.append(s.actions[keep])
            mask[i, : s.length] = 1.0
        S = len(segments)
        flat_obs = np.concatenate(obs)  # (S*T, *obs_shape)
        flat_act = np.concatenate(acts) if self.use_action else None
        x, a = self._np_features(flat_obs, flat_act)
        bad = [s.id for s, ok in zip(segments, _finite_rows(x, a, S), strict=True) if not ok]
        if bad:
            raise ValueError(f"segments {bad[:5]} have NaN or inf in obs/actions; drop them or fix the recording")
        x_t = torch.from_numpy(x).reshape(S, T, *x.shape[1:])
        a_t = None if a is None else torch.from_numpy(a).reshape(S, T, -1)
        return FeatureBank(x_t, a_t, torch.from_numpy(mask))

    def bank_returns(
        self,
        bank: FeatureBank,
        idx: torch.Tensor,
        *,
        per_member: bool,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Raw returns ``(K, B, k)`` of bank rows ``idx``: ``(K, B, k)`` if per_member else ``(B, k)`` shared.

        Chunked over B; respects grad mode and train/eval (``generator`` drives CNN dropout).
        """
        K, T = self.members, bank.T
        lead = 1 if per_member else 0
        B, k = idx.shape[lead], idx.shape[-1]
        rows_per_chunk = max(1, self.chunk_steps // (k * T))
        outs = []
        for s in range(0, max(B, 1), rows_per_chunk):
            sel = idx[:, s : s + rows_per_chunk] if per_member else idx[s : s + rows_per_chunk]  # (K?, b, k)
            b = sel.shape[lead]
            x = bank.x[sel]  # (K?, b, k, T, *x_shape)
            a = None if bank.a is None else bank.a[sel]
            if per_member:
                x = x.reshape(K, b * k * T, *x.shape[4:])  # (K, b*k*T, ...)
                a = None if a is None else a.reshape(K, b * k * T, -1)
            else:
                x = x.reshape(b * k * T, *x.shape[3:])  # (b*k*T, ...)
                a = None if a is None else a.reshape(b * k * T, -1)
            r = self(x, a, generator=generator).reshape(K, b, k, T)  # (K, b, k, T)
            outs.append((r * bank.mask[sel]).sum(-1))  # (K, b, k)
        return torch.cat(outs, dim=1)


def _finite_rows(x: np.ndarray, a: np.ndarray | None, S: int) -> np.ndarray:
    """``(S,)`` whether each segment's features are all finite."""
    ok = np.ones(S, dtype=bool)
    for arr in (x, a):
        if arr is not None and arr.dtype.kind == "f":
            ok &= np.isfinite(arr.reshape(S, -1)).all(1)
    return ok


class _eval:
    """Context: module in eval mode, previous mode restored on exit (no-op when already in eval)."""

    def __init__(self, module: nn.Module):
        self.module, self.was_training = module, module.training

    def __enter__(self) -> None:
        if self.was_training:
            self.module.train(False)

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.module.train(True)
