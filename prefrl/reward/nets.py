"""Net inputs from gymnasium spaces, and reward nets whose K ensemble members are a leading tensor dim.

No forward pass loops over members in Python: an MLP layer is one ``baddbmm`` over ``(K, N, d)``;
the CNN runs all members as the groups of grouped convolutions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.01
SUPPORTED = "Box, Discrete, MultiDiscrete or MultiBinary"


def is_image_space(space: gym.Space) -> bool:
    """A Box of uint8 in [0, 255] with 3 dims, channels first ``(C, H, W)`` or last ``(H, W, C)`` (as SB3 decides)."""
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) == 3
        and bool(np.all(space.low == 0))
        and bool(np.all(space.high == 255))
    )


def _channels_last(shape: tuple[int, ...]) -> bool:
    # The channel dim is the smallest one; a tie goes to channels-first, like SB3.
    smallest = int(np.argmin(shape))
    if smallest == 1:
        raise ValueError(
            f"image observation shape {shape}: cannot tell the channel dim (smallest dim is in the middle); "
            "transpose observations to (C, H, W) or (H, W, C)"
        )
    return smallest == 2


@dataclass(frozen=True, eq=False)
class SpaceEncoder:
    """Turns a batch of one space's elements into net inputs (numpy, no torch call).

    ``kind`` is ``"image"`` (output ``(N, C, H, W)`` uint8, scaled by the net), ``"box"``, ``"onehot"``
    (Discrete / MultiDiscrete) or ``"binary"`` (output ``(N, dim)`` float32). Images may have regions blanked
    (zeroed in every channel), e.g. an Atari game's score, which would tell the reward model the reward.
    """

    space: gym.Space
    role: str
    kind: str
    dim: int  # length of the float feature vector (C*H*W for images)
    image_shape: tuple[int, int, int] | None = None  # (C, H, W)
    channels_last: bool = False
    offsets: np.ndarray | None = None  # (n_sub,) one-hot slot of each sub-action's first value
    nvec: np.ndarray | None = None  # (n_sub,)
    start: np.ndarray | None = None  # (n_sub,)
    keep: np.ndarray | None = None  # (1, 1, H, W) uint8: 0 on blanked pixels, 1 elsewhere

    @staticmethod
    def blank_mask(shape: tuple[int, int], regions: Sequence[Sequence[int]]) -> np.ndarray:
        """``(H, W)`` uint8, 0 inside the ``[top, bottom, left, right]`` rectangles (bottom, right exclusive)."""
        h, w = shape
        keep = np.ones((h, w), dtype=np.uint8)
        for region in regions:
            if len(region) != 4:
                raise ValueError(f"blank region {list(region)}: expected [top, bottom, left, right]")
            top, bottom, left, right = (int(v) for v in region)
            if not (0 <= top < bottom <= h and 0 <= left < right <= w):
                raise ValueError(
                    f"blank region {list(region)} is not inside the {h}x{w} frame "
                    f"(need 0 ≤ top < bottom ≤ {h} and 0 ≤ left < right ≤ {w})"
                )
            keep[top:bottom, left:right] = 0
        return keep

    @classmethod
    def of(cls, space: gym.Space, *, role: str, blank: Sequence[Sequence[int]] = ()) -> SpaceEncoder:
        """Encoder for ``space``; ``role`` ("observation" / "action") names it in errors. ``blank``: rectangles
        ``[top, bottom, left, right]`` of an image space's frames to zero (see :meth:`blank_mask`)."""
        S = gym.spaces
        if is_image_space(space):
            last = _channels_last(space.shape)
            h, w, c = space.shape if last else (space.shape[1], space.shape[2], space.shape[0])
            keep = cls.blank_mask((h, w), blank)[None, None] if len(blank) else None  # (1, 1, H, W)
            return cls(space, role, "image", int(np.prod(space.shape)), (c, h, w), last, keep=keep)
        if len(blank):
            raise ValueError(f"blank regions need image observations (uint8 frames); the {role} space is {space}")
        if isinstance(space, S.Box):
            return cls(space, role, "box", int(np.prod(space.shape, dtype=np.int64)))
        if isinstance(space, S.Discrete):
            n, start = np.array([space.n]), np.array([space.start])
            return cls(space, role, "onehot", int(space.n), offsets=np.zeros(1, np.int64), nvec=n, start=start)
        if isinstance(space, S.MultiDiscrete):
            nvec = np.asarray(space.nvec, dtype=np.int64).reshape(-1)
            start = np.asarray(getattr(space, "start", np.zeros_like(space.nvec)), dtype=np.int64).reshape(-1)
            offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
            return cls(space, role, "onehot", int(nvec.sum()), offsets=offsets, nvec=nvec, start=start)
        if isinstance(space, S.MultiBinary):
            return cls(space, role, "binary", int(np.prod(space.shape, dtype=np.int64)))
        fix = (
            "flatten it with gymnasium.wrappers.FlattenObservation"
            if role == "observation" and isinstance(space, (S.Dict, S.Tuple))
            else f"wrap the env so its {role} space is a {SUPPORTED} space"
        )
        raise ValueError(f"the reward model cannot use {role} space {space}; {fix}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.space.shape)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, *space.shape)`` -> ``(N, dim)`` float32, or ``(N, C, H, W)`` uint8 for images."""
        x = np.asarray(x)
        n = x.shape[0] if x.ndim else 0
        if x.shape[1:] != self.shape and not (self.kind == "onehot" and x.shape[1:] == (len(self.nvec),)):
            raise ValueError(
                f"{self.role} batch has shape {x.shape} but the {self.role} space {self.space} needs "
                f"{('N', *self.shape)}".replace("'N'", "N")
            )
        if self.kind == "image":
            x = x.astype(np.uint8, copy=False)
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.channels_last else x  # (N, C, H, W)
            return x * self.keep if self.keep is not None else x  # a new array: the caller's frames stay whole
        if self.kind == "onehot":
            v = x.reshape(n, -1).astype(np.int64, copy=False) - self.start  # (N, n_sub)
            if v.size and (v.min() < 0 or (v >= self.nvec).any()):
                raise ValueError(f"{self.role} values outside {self.space}: {x.reshape(n, -1)[:3].tolist()} ...")
            out = np.zeros((n, self.dim), dtype=np.float32)
            out[np.arange(n)[:, None], self.offsets + v] = 1.0
            return out
        return x.reshape(n, self.dim).astype(np.float32, copy=False)


def _uniform_(t: torch.Tensor, fan_in: int, generator: torch.Generator) -> None:
    # PyTorch's default Linear/Conv init: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        t.uniform_(-bound, bound, generator=generator)


class EnsembleMLP(nn.Module):
    """K independent MLPs ``d_in -> hidden... -> 1`` with LeakyReLU(0.01), one ``baddbmm`` per layer."""

    def __init__(self, members: int, d_in: int, hidden: tuple[int, ...] = (64, 64), *, generator: torch.Generator):
        super().__init__()
        self.members, self.d_in = members, d_in
        sizes = [d_in, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(sizes):
            w = nn.Parameter(torch.empty(members, a, b))  # (K, d_in, d_out)
            bias = nn.Parameter(torch.empty(members, 1, b))  # (K, 1, d_out)
            _uniform_(w, a, generator)
            _uniform_(bias, a, generator)
            self.weights.append(w)
            self.biases.append(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, d_in)`` shared by all members or ``(K, N, d_in)`` one batch per member -> ``(K, N)``."""
        h = x.expand(self.members, *x.shape) if x.dim() == 2 else x  # (K, N, d_in)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)  # (K, N, d_out)
            if i < last:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return h.squeeze(-1)  # (K, N)

    def weight_matrices(self) -> list[torch.Tensor]:
        return list(self.weights)

    def to_numpy(self) -> NumpyMLP:
        """A detached float32 copy for fast inference on small shared batches."""
        K, d, h0 = self.weights[0].shape
        ws = [w.detach().cpu().numpy().astype(np.float32) for w in self.weights]  # [(K, a, b)]
        bs = [b.detach().cpu().numpy().astype(np.float32) for b in self.biases]  # [(K, 1, b)]
        # First layer of all members as one matmul: (N, d) @ (d, K*h0).
        w0 = np.ascontiguousarray(ws[0].transpose(1, 0, 2).reshape(d, K * h0))
        return NumpyMLP(K, h0, w0, bs[0].reshape(1, K * h0).copy(), ws[1:], bs[1:])


@dataclass(frozen=True, eq=False)
class NumpyMLP:
    """:meth:`EnsembleMLP.forward` in numpy for a shared ``(N, d_in)`` batch; far less call overhead than torch."""

    members: int
    h0: int
    w0: np.ndarray  # (d_in, K*h0)
    b0: np.ndarray  # (1, K*h0)
    ws: list[np.ndarray]  # [(K, a, b)] later layers
    bs: list[np.ndarray]  # [(K, 1, b)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(N, d_in)`` float32 -> ``(K, N)``."""
        n = x.shape[0]
        h = x @ self.w0  # (N, K*h0)
        h += self.b0
        h = h.reshape(n, self.members, self.h0).transpose(1, 0, 2)  # (K, N, h0)
        for w, b in zip(self.ws, self.bs, strict=True):
            h = np.maximum(h, LEAKY_SLOPE * h)
            h = np.matmul(h, w)  # (K, N, d_out)
            h += b
        return h[..., 0]  # (K, N)


class EnsembleCNN(nn.Module):
    """The paper's Atari reward net per member, all K members as conv groups.

    Four convs 7x7/5x5/3x3/3x3, strides 3/2/1/1, 16 filters, each followed by batch norm, LeakyReLU(0.01)
    and dropout; then (optionally with action features) FC 64 -> scalar. Input uint8, scaled by 1/255 here.
    """

    CONVS = ((7, 3), (5, 2), (3, 1), (3, 1))  # (kernel, stride)
    FILTERS = 16

    def __init__(
        self,
        members: int,
        image_shape: tuple[int, int, int],
        act_dim: int = 0,
        *,
        dropout: float = 0.5,
        fc: int = 64,
        generator: torch.Generator,
    ):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        K, F_ = members, self.FILTERS
        self.members, self.image_shape, self.act_dim, self.dropout = members, tuple(image_shape), act_dim, dropout
        c, h, w = image_shape
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = c
        for k, s in self.CONVS:
            conv = nn.Conv2d(K * c_in, K * F_, k, stride=s, groups=K)
            _uniform_(conv.weight, c_in * k * k, generator)
            _uniform_(conv.bias, c_in * k * k, generator)
            self.convs.append(conv)
            self.norms.append(nn.BatchNorm2d(K * F_))
            c_in = F_
            h, w = (h - k) // s + 1, (w - k) // s + 1
        if h < 1 or w < 1:
            raise ValueError(
                f"image shape {tuple(image_shape)} is too small for the paper's CNN (needs ~40x40 or more)"
            )
        self.flat = F_ * h * w
        self.fc = EnsembleMLP(K, self.flat + act_dim, (fc,), generator=generator)

    def forward(
        self, x: torch.Tensor, a: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uint8 ``x`` ``(N, C, H, W)`` (shared) or ``(K, N, C, H, W)``; ``a`` ``([K,] N, d_act)`` -> ``(K, N)``."""
        K = self.members
        # Channels-last activations: the CPU convolutions (and their gradients) run about twice as fast.
        last = torch.channels_last
        if x.dim() == 4:  # shared input: the first conv runs once, ungrouped, producing every member's channels
            N = x.shape[0]
            h = x.contiguous(memory_format=last).float().div_(255.0)  # (N, C, H, W); converted once, laid out
            first = self.convs[0]
            h = F.conv2d(h, first.weight, first.bias, first.stride)  # (N, K*16, h, w)
        else:
            _, N, C, H, W = x.shape
            h = x.transpose(0, 1).reshape(N, K * C, H, W)  # (N, K*C, H, W) member-major, still uint8
            h = self.convs[0](h.contiguous(memory_format=last).float().div_(255.0))  # (N, K*16, h, w)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if i:
                h = conv(h)  # (N, K*16, h, w), groups=K
            h = F.leaky_relu(norm(h), LEAKY_SLOPE)
            if self.training and self.dropout > 0:
                # A float mask in h's own layout: about twice as fast as torch.where or bernoulli_ here.
                keep = torch.empty_like(h).uniform_(generator=generator).ge_(self.dropout)  # 1.0 kept, 0.0 dropped
                h = h * keep.mul_(1.0 / (1.0 - self.dropout))
        h = h.reshape(N, K, self.flat).transpose(0, 1)  # (K, N, flat)
        if self.act_dim:
            if a is None:
                raise ValueError("this CNN was built with action features; pass the actions too")
            a = a.expand(K, *a.shape) if a.dim() == 2 else a  # (K, N, d_act)
            h = torch.cat([h, a], dim=-1)  # (K, N, flat + d_act)
        return self.fc(h)  # (K, N)

    def weight_matrices(self) -> list[torch.Tensor]:
        return [conv.weight for conv in self.convs] + self.fc.weight_matrices()
