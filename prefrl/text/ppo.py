"""PPO for language models with a per-token KL penalty to the initial model (Ziegler et al. 2019).

One :meth:`TextPPO.step` is one round of the algorithm:

1. *Generate* a batch of responses with the policy π (batched, KV cache, sampling temperature T).
2. *Score* each response with ``reward_fn`` (a reward model's mean, or an oracle's score); a response
   that never reached an end token gets ``no_end_penalty`` added, as in the text environment.
3. *Penalize* every response token with ``−β·(log π − log ρ)``, where ρ is the frozen initial model;
   the score is paid on the last response token. Both log-probabilities are of the tempered
   distribution ``softmax(logits / T)`` the tokens were sampled from.
4. *Advantages* by GAE (γ, λ) from a value head on π's last hidden states, whitened over the batch.
5. *Optimize* the clipped PPO objective (policy and value clipping) for several epochs of minibatches.
6. *Adapt* β towards a target KL with the clipped proportional rule (:class:`KLController`).

The value function is a scalar head on π's own hidden states rather than a separate network: one
forward pass yields both the token log-probabilities and the values, which halves the cost of every
PPO step (a second copy of a 135 M-parameter model on two CPU cores would double it). The price is
that value-loss gradients also move π's trunk; ``vf_coef`` keeps that small and the KL penalty
charges for any drift it causes. Dropout is off throughout (the models are kept in eval mode), so
the log-probabilities of the batch are exactly what the first update recomputes: the ratio starts
at 1 (``ppo/first_ratio_dev``), and ``ppo/gen_logprob_dev`` shows how far the KV-cache sampler's own
log-probabilities are from them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from prefrl.config import ConfigError
from prefrl.io import atomic_write

if TYPE_CHECKING:
    from prefrl.text.lm import LanguageModel, Rollout

RewardFn = Callable[["Rollout"], torch.Tensor]
"""A generated batch -> ``(B,)`` float scores, higher is better (no-end penalty not included)."""


@dataclass
class PPOConfig:
    batch_size: int = 64
    """Responses generated per step (one per prompt passed to :meth:`TextPPO.step`)."""
    minibatches: int = 4
    """Gradient steps per epoch; ``batch_size`` must be a multiple of it."""
    ppo_epochs: int = 4
    """Passes over each batch of responses."""
    lr: float = 1e-4
    """Adam step size of the policy and its value head (large LMs want ~1e-5)."""
    clip_range: float = 0.2
    """Policy ratio clipping ε."""
    clip_range_vf: float = 0.2
    """Value clipping around the values at generation time."""
    gamma: float = 1.0
    """Discount over the tokens of a response (1: the score at the end counts fully for every token)."""
    lam: float = 0.95
    """GAE λ."""
    vf_coef: float = 0.1
    """Weight of the value loss beside the policy loss."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global norm."""
    temperature: float = 0.7
    """Sampling temperature; the log-probabilities for the ratio and the KL use the same one."""
    response_length: int = 24
    """Most tokens a response may have (a response ends at its first end token)."""
    init_kl_coef: float = 0.2
    """β at the start."""
    adaptive_kl: bool = True
    """Adapt β towards ``target_kl``; ``False`` keeps β at ``init_kl_coef``."""
    target_kl: float = 6.0
    """KL (nats per response) the adaptive controller steers towards."""
    kl_horizon: float = 10_000
    """Responses over which the controller closes the gap to the target (Ziegler et al.'s K_β = batch / horizon)."""
    whiten_rewards: bool = False
    """Divide the per-token rewards of a batch by their standard deviation before GAE (a positive rescaling:
    the score and the KL penalty keep their relative weight, the optimal policy is unchanged)."""
    no_end_penalty: float = -1.0
    """Added to the score of a response that reached no end token."""
    seed: int = 0
    """Seeds sampling and minibatch order (a text run adds its own ``seed`` to it)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad knob (also run by :class:`TextPPO`, after overrides)."""

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config: ppo.{name} = {getattr(self, name)!r} {why}")

        for name in ("batch_size", "minibatches", "ppo_epochs", "response_length"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer")
        if self.batch_size % self.minibatches:
            raise bad("minibatches", f"must divide batch_size ({self.batch_size}); pick a divisor")
        for name in ("lr", "clip_range", "clip_range_vf", "temperature", "kl_horizon", "max_grad_norm"):
            if not float(getattr(self, name)) > 0:
                raise bad(name, "must be > 0")
        for name in ("gamma", "lam"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise bad(name, "must be in [0, 1]")
        if self.init_kl_coef < 0 or self.vf_coef < 0:
            raise bad("init_kl_coef" if self.init_kl_coef < 0 else "vf_coef", "must be >= 0")
        if self.adaptive_kl and not self.target_kl > 0:
            raise bad("target_kl", "must be > 0 (or set ppo.adaptive_kl = false for a fixed β)")


class KLController:
    """The KL coefficient β: fixed (``target=None``) or adapted towards ``target`` (Ziegler et al. 2019).

    The adaptive rule is proportional with a clipped error: after a batch of ``n`` responses whose
    mean KL is ``kl``, ``e = clip(kl / target − 1, −0.2, 0.2)`` and ``β ← β · (1 + e · n / horizon)``.
    """

    def __init__(self, init: float, *, target: float | None = None, horizon: float = 10_000) -> None:
        if init < 0:
            raise ConfigError(f"KL coefficient must be >= 0, got {init}")
        if target is not None and not target > 0:
            raise ConfigError(f"target KL must be > 0 (or None for a fixed coefficient), got {target}")
        if not horizon > 0:
            raise ConfigError(f"KL horizon must be > 0, got {horizon}")
        self.beta = float(init)
        self.target = target
        self.horizon = float(horizon)

    def update(self, kl: float, n: int) -> float:
        """Adapt β after ``n`` responses with mean KL ``kl`` (nats per response); return the new β."""
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.beta *= 1.0 + error * n / self.horizon
        return self.beta

    def state_dict(self) -> dict[str, Any]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.beta, self.target, self.horizon = float(state["beta"]), state["target"], float(state["horizon"])


# -- the math, one job per function -------------------------------------------------------------
def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def whiten(x: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """``x`` divided by its standard deviation over ``mask``, and centred there if ``shift_mean``; 0 off the mask."""
    mean = masked_mean(x, mask)
    scale = torch.rsqrt(masked_mean((x - mean) ** 2, mask) + 1e-8)
    return ((x - mean) * scale if shift_mean else x * scale) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimates and returns, ``(B, N)`` each, for responses that end where ``mask`` does.

    ``rewards``, ``values``: ``(B, N)`` per response token; ``mask``: ``(B, N)`` True on a response's
    tokens (a prefix of each row). The value after a response's last token is 0.
    """
    m = mask.to(values.dtype)
    N = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(N)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        next_value = values[:, t] * m[:, t]
        advantages[:, t] = next_adv
    return advantages, (advantages + values) * m


def response_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, *, prompt_width: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability and entropy of every response token under ``softmax(logits / T)``, ``(B, N)`` each.

    ``logits``: ``(B, P + N, V)`` of a forward pass over ``tokens`` ``(B, P + N)``; the token at
    column ``P + j`` is predicted by the logits at column ``P + j − 1``.
    """
    logp = F.log_softmax(logits[:, prompt_width - 1 : -1].float() / temperature, dim=-1)  # (B, N, V)
    taken = logp.gather(-1, tokens[:, prompt_width:, None]).squeeze(-1)  # (B, N)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, N)
    return taken, entropy


def trim(rollout: Rollout) -> Rollout:
    """The rollout without the trailing columns that are padding in every row (``N`` = the longest response)."""
    width = rollout.prompt_width + int(rollout.response_mask.sum(1).max())
    cut = {k: getattr(rollout, k)[:, :width] for k in ("tokens", "attention_mask", "response_mask", "logprobs")}
    return dataclasses.replace(rollout, **{k: v for k, v in cut.items() if v is not None})


@dataclass
class Experience:
    """One generated batch with everything PPO needs; ``(B, N)`` tensors are per response token."""

    tokens: torch.Tensor  # (B, P + N)
    attention_mask: torch.Tensor  # (B, P + N)
    prompt_width: int
    mask: torch.Tensor  # (B, N) bool, response tokens
    logprobs: torch.Tensor  # (B, N) log π_old(token) at temperature T
    values: torch.Tensor  # (B, N) V_old before each token
    advantages: torch.Tensor  # (B, N) whitened
    returns: torch.Tensor  # (B, N)

    def select(self, idx: torch.Tensor) -> Experience:
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self) if f.name != "prompt_width"}
        )


class TextPPO:
    """PPO with a KL penalty to the initial model for a :class:`~prefrl.text.lm.LanguageModel` (see the module doc).

    Args:
        policy: the model to finetune (in place); a frozen clone of it becomes the reference ρ.
        reward_fn: ``rollout -> (B,)`` scores.
        cfg: the knobs.
    """

    def __init__(self, policy: LanguageModel, reward_fn: RewardFn, cfg: PPOConfig | None = None) -> None:
        self.cfg = cfg = cfg or PPOConfig()
        cfg.validate()
        self.policy = policy.eval()  # eval: no dropout, so stored and recomputed log-probs agree
        self.ref = policy.clone(frozen=True).eval()
        self.reward_fn = reward_fn
        device = next(policy.parameters()).device
        self.value_head = nn.utils.skip_init(nn.Linear, policy.hidden_size, 1, device=device)  # (E,) -> scalar
        nn.init.zeros_(self.value_head.weight)  # values start at 0: no random draw
        nn.init.zeros_(self.value_head.bias)
        params = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5, foreach=True)
        target = cfg.target_kl if cfg.adaptive_kl else None
        self.kl = KLController(cfg.init_kl_coef, target=target, horizon=cfg.kl_horizon)
        self.sample_rng = torch.Generator(device=device).manual_seed(cfg.seed)
        self.shuffle_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.steps = 0

    # -- forward passes ---------------------------------------------------------------------------
    def evaluate(
        self, model: LanguageModel, tokens: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, N)`` log-probs at the sampling temperature, entropies and values (values 0 for ρ)."""
        logits, hidden = model(tokens, attention_mask)  # (B, S, V), (B, S, E)
        logp, entropy = response_logprobs(logits, tokens, prompt_width=prompt_width, temperature=self.cfg.temperature)
        if model is not self.policy:
            return logp, entropy, torch.zeros_like(logp)
        h = hidden[:, prompt_width - 1 : -1]  # (B, N, E) the state before each response token
        values = self.value_head(h.to(self.value_head.weight.dtype)).squeeze(-1)  # (B, N)
        return logp, entropy, values

    @torch.no_grad()
    def _in_chunks(self, model: LanguageModel, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and values of a whole batch, one minibatch-sized chunk at a time (bounds the logits' memory)."""
        size = self.cfg.batch_size // self.cfg.minibatches
        parts = [
            self.evaluate(
                model, rollout.tokens[i : i + size], rollout.attention_mask[i : i + size], rollout.prompt_width
            )
            for i in range(0, rollout.tokens.shape[0], size)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[2] for p in parts])

    # -- one round --------------------------------------------------------------------------------
    def step(self, prompts: Sequence[Sequence[int]]) -> dict[str, float]:
        """Generate, score, penalize, and optimize on one batch of ``batch_size`` prompts; return stats.

        Stats (``ppo/...``): ``score`` (mean of ``reward_fn``), ``reward`` (with the no-end penalty), ``kl``
        (mean nats per response between π and ρ), ``beta`` (used for this batch) and ``next_beta``,
        ``policy_loss``, ``value_loss``, ``clip_frac``, ``vf_clip_frac``, ``approx_kl`` (π moving within
        the step), ``entropy`` (per token, tempered), ``response_length``, ``ended_frac``, ``value_mean``,
        ``return_mean``, ``first_ratio_dev``, ``gen_logprob_dev``, ``gen_tokens_per_s`` and
        ``tokens_per_s`` (response tokens per second of generation and of the whole step), ``steps``.
        """
        cfg = self.cfg
        if len(prompts) != cfg.batch_size:
            raise ConfigError(
                f"TextPPO.step got {len(prompts)} prompts; pass exactly ppo.batch_size = {cfg.batch_size}"
            )
        if any(len(p) == 0 for p in prompts):
            raise ConfigError("TextPPO.step: every prompt needs at least one token")
        t0 = time.perf_counter()

        # 1. Generate with the KV cache at the sampling temperature.
        with torch.no_grad():
            rollout = self.policy.generate(
                [list(p) for p in prompts], cfg.response_length, temperature=cfg.temperature, generator=self.sample_rng
            )
        t_gen = time.perf_counter() - t0
        P = rollout.prompt_width
        rollout = trim(rollout)  # drop the columns after the longest response: they are padding in every row
        mask = rollout.response_mask[:, P:]  # (B, N)
        n_tokens = int(mask.sum())

        # 2. Score; a response that never ended pays the fixed penalty.
        with torch.no_grad():
            score = torch.as_tensor(self.reward_fn(rollout), dtype=torch.float32).to(mask.device)
        if score.shape != (cfg.batch_size,):
            raise ValueError(f"reward_fn returned shape {tuple(score.shape)}; it must return ({cfg.batch_size},)")
        total = score + cfg.no_end_penalty * (~rollout.ended).float()  # (B,)

        # 3. Per-token reward: −β·(log π − log ρ), the score on each response's last token.
        logprobs, values = self._in_chunks(self.policy, rollout)  # (B, N) each
        ref_logprobs, _ = self._in_chunks(self.ref, rollout)
        m = mask.float()
        gen_dev = math.nan  # how far the KV-cache sampler's log-probs are from the recomputed ones used here
        if rollout.logprobs is not None:
            gen_dev = float(((rollout.logprobs[:, P:] - logprobs).abs() * m).max())
        kl_tokens = (logprobs - ref_logprobs) * m  # (B, N)
        beta = self.kl.beta
        rewards = -beta * kl_tokens
        last = (mask.long().sum(1) - 1).clamp_min(0)  # (B,) index of each response's last token
        rewards[torch.arange(cfg.batch_size, device=last.device), last] += total
        if cfg.whiten_rewards:
            rewards = whiten(rewards, m, shift_mean=False)

        # 4. Advantages (GAE), whitened over the batch's response tokens.
        advantages, returns = gae(rewards, values, m, gamma=cfg.gamma, lam=cfg.lam)
        advantages = whiten(advantages, m)
        exp = Experience(rollout.tokens, rollout.attention_mask, P, mask, logprobs, values, advantages, returns)

        # 5. Clipped PPO updates, several epochs of minibatches.
        size = cfg.batch_size // cfg.minibatches
        names = ("policy_loss", "value_loss", "clip_frac", "vf_clip_frac", "approx_kl", "entropy")
        log: dict[str, list[float]] = {k: [] for k in names}
        first_ratio_dev = math.nan
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch_size, generator=self.shuffle_rng).to(mask.device)
            for start in range(0, cfg.batch_size, size):
                mb = exp.select(order[start : start + size])
                mm = mb.mask.float()
                logp, entropy, v = self.evaluate(self.policy, mb.tokens, mb.attention_mask, P)
                ratio = torch.exp(logp - mb.logprobs)  # (b, N)
                if math.isnan(first_ratio_dev):
                    first_ratio_dev = float(((ratio.detach() - 1).abs() * mm).max())
                pg = torch.maximum(
                    -mb.advantages * ratio, -mb.advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
                )
                v_clipped = mb.values + (v - mb.values).clamp(-cfg.clip_range_vf, cfg.clip_range_vf)
                vf = 0.5 * torch.maximum((v - mb.returns) ** 2, (v_clipped - mb.returns) ** 2)
                policy_loss, value_loss = masked_mean(pg, mm), masked_mean(vf, mm)
                loss = policy_loss + cfg.vf_coef * value_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], cfg.max_grad_norm
                )
                self.optimizer.step()
                with torch.no_grad():
                    log["policy_loss"].append(policy_loss.item())
                    log["value_loss"].append(value_loss.item())
                    log["clip_frac"].append(masked_mean(((ratio - 1).abs() > cfg.clip_range).float(), mm).item())
                    log["vf_clip_frac"].append(
                        masked_mean(((v - mb.values).abs() > cfg.clip_range_vf).float(), mm).item()
                    )
                    log["approx_kl"].append(masked_mean(0.5 * (logp - mb.logprobs) ** 2, mm).item())
                    log["entropy"].append(masked_mean(entropy, mm).item())

        # 6. Adapt β to the batch's KL (nats per response).
        kl = float(kl_tokens.sum(1).mean())
        self.kl.update(kl, cfg.batch_size)
        self.steps += 1
        seconds = time.perf_counter() - t0
        return {
            "ppo/score": float(score.mean()),
            "ppo/reward": float(total.mean()),
            "ppo/kl": kl,
            "ppo/beta": beta,
            "ppo/next_beta": self.kl.beta,
            **{f"ppo/{k}": sum(v) / len(v) for k, v in log.items()},
            "ppo/first_ratio_dev": first_ratio_dev,
            "ppo/gen_logprob_dev": gen_dev,
            "ppo/response_length": n_tokens / cfg.batch_size,
            "ppo/ended_frac": float(rollout.ended.float().mean()),
            "ppo/value_mean": float(masked_mean(values, m)),
            "ppo/return_mean": float(masked_mean(returns, m)),
            "ppo/gen_tokens_per_s": n_tokens / max(t_gen, 1e-9),
            "ppo/tokens_per_s": n_tokens / max(seconds, 1e-9),
            "ppo/steps": float(self.steps),
        }

    # -- checkpoints ------------------------------------------------------------------------------
    def _ref_fingerprint(self) -> torch.Tensor:
        """``(n_params,)`` float64 sum of each reference parameter: tells one initial model from another."""
        return torch.stack([p.detach().double().sum() for p in self.ref.parameters()]).cpu()

    def save(self, path: str | Path) -> None:
        """Policy, value head, optimizer, β and random states in one file (loadable with ``weights_only=True``).

        The reference model is not saved: :meth:`load` into a trainer built from the same initial model.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "policy": self.policy.state_dict(),
            "value_head": self.value_head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "kl": self.kl.state_dict(),
            "sample_rng": self.sample_rng.get_state(),
            "shuffle_rng": self.shuffle_rng.get_state(),
            "steps": self.steps,
            "ref_fingerprint": self._ref_fingerprint(),
            "config": dataclasses.asdict(self.cfg),
        }
        with atomic_write(path) as tmp:
            torch.save(blob, tmp)

    def load(self, path: str | Path) -> TextPPO:
        """Resume from :meth:`save`'s file; this trainer must have been built from the same initial model."""
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
            keys = {"policy", "value_head", "optimizer", "kl", "sample_rng", "shuffle_rng", "steps", "ref_fingerprint"}
            if not isinstance(blob, dict) or not keys <= blob.keys():
                raise ValueError("keys missing")
        except Exception as e:  # unreadable, truncated or foreign file: torch raises many kinds
            raise ConfigError(f"{path}: not a readable TextPPO checkpoint ({e}); write one with TextPPO.save") from None
        mine = self._ref_fingerprint()
        if blob["ref_fingerprint"].shape != mine.shape or not torch.allclose(
            blob["ref_fingerprint"], mine, rtol=1e-6, atol=1e-6
        ):
            raise ConfigError(
                f"{path}: this checkpoint was trained against a different initial model; "
                "build the trainer from the same initial model before loading"
            )
        self.policy.load_state_dict(blob["policy"])
        self.value_head.load_state_dict(blob["value_head"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.kl.load_state_dict(blob["kl"])
        self.sample_rng.set_state(blob["sample_rng"])
        self.shuffle_rng.set_state(blob["shuffle_rng"])
        self.steps = int(blob["steps"])
        return self
