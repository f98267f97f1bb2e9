"""Speed of the text PPO trainer: tokens/s of batched generation and of a whole PPO step.

Generation: ``LanguageModel.generate`` (KV cache) on a batch of shipped prompts at temperature 0.7,
and, for the tiny GPT, the same sampler recomputing the whole prefix at every token (no cache) for
comparison. PPO step: :meth:`prefrl.text.ppo.TextPPO.step` with the default knobs (batch 64, 4
minibatches, 4 epochs, responses of up to 24 tokens) on a cheap score (positive words counted), so
the table measures the trainer, not a scorer. Tokens are real response tokens (up to and including
the end token); medians over repeats. Writes ``benchmarks/results/text_ppo_speed.md``.

    python benchmarks/text_ppo_speed.py [--lm tiny] [--repeats 5] [--steps 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from envs.text import load_prompts
from prefrl.config import ConfigError
from prefrl.text.corpus import POSITIVE
from prefrl.text.lm import LanguageModel, TinyLM, TinyTokenizer, load_lm
from prefrl.text.model import GPT, GPTConfig, left_pad
from prefrl.text.ppo import PPOConfig, TextPPO

HERE = Path(__file__).resolve().parent


def model(spec: str) -> tuple[LanguageModel, str]:
    """The language model of ``spec``; for ``tiny`` without its checkpoint, a random GPT of the same shape."""
    try:
        return load_lm(spec), spec
    except ConfigError:
        if spec != "tiny":
            raise
        torch.manual_seed(0)
        tok = TinyTokenizer.load()
        gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=3, n_embd=128, block_size=32)).eval()
        return TinyLM(gpt, tok), "tiny (randomly initialized: the pretrained checkpoint is not built)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lm", default="tiny", help="tiny | smollm2 | a model directory")
    p.add_argument("--repeats", type=int, default=5, help="generation batches timed")
    p.add_argument("--steps", type=int, default=4, help="PPO steps timed (after one warm-up step)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (the tiny GPT's ops are too small to share)"
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from prefrl.bench import machine_info as machine

    load = os.getloadavg()[0]
    lm, label = model(args.lm)
    tok = lm.tokenizer
    cfg = PPOConfig()
    rng = np.random.default_rng(0)
    words = TinyTokenizer.load()
    all_prompts = [tok.encode(words.decode(p)) for p in load_prompts(words)]  # the shipped prompts, any tokenizer

    def batch() -> list[list[int]]:
        return [all_prompts[i] for i in rng.integers(len(all_prompts), size=cfg.batch_size)]

    rows: list[tuple[str, float, float]] = []  # (what, seconds, tokens/s)

    # 1. Generation with the KV cache.
    gen = torch.Generator().manual_seed(0)
    lm.generate(batch(), cfg.response_length, temperature=cfg.temperature, generator=gen)  # warm-up
    times, rates = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        r = lm.generate(batch(), cfg.response_length, temperature=cfg.temperature, generator=gen)
        times.append(time.perf_counter() - t0)
        rates.append(int(r.response_mask.sum()) / times[-1])
    rows.append((f"generate, KV cache (batch {cfg.batch_size})", statistics.median(times), statistics.median(rates)))
    print(rows[-1], flush=True)

    # 2. The same sampler recomputing every prefix (tiny GPT only).
    if isinstance(lm, TinyLM):
        times, rates = [], []
        for _ in range(args.repeats):
            ids, mask = left_pad(batch())
            t0 = time.perf_counter()
            with torch.no_grad():
                out = lm.gpt.generate(ids, mask, max_new_tokens=cfg.response_length, temperature=cfg.temperature,
                                      stop_tokens=tok.end_ids, generator=gen, use_cache=False)  # fmt: skip
            times.append(time.perf_counter() - t0)
            is_end = torch.isin(out, torch.tensor(tok.end_ids))
            n = int(((is_end.long().cumsum(1) - is_end.long()) == 0).sum())  # tokens up to and incl. the first end
            rates.append(n / times[-1])
        rows.append(
            (f"generate, no cache (batch {cfg.batch_size})", statistics.median(times), statistics.median(rates))
        )
        print(rows[-1], flush=True)

    # 3. Whole PPO steps: generate, score, reference pass, GAE, 4 epochs x 4 minibatches.
    positive = torch.tensor(sorted({tok.encode(f" {w}")[-1] for w in POSITIVE}))  # a word's (last) token

    def score(rollout) -> torch.Tensor:
        P = rollout.prompt_width
        return (torch.isin(rollout.tokens[:, P:], positive) & rollout.response_mask[:, P:]).float().sum(1)

    trainer = TextPPO(lm, score, cfg)
    trainer.step(batch())  # warm-up
    times, rates, gen_rates, lengths = [], [], [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        s = trainer.step(batch())
        times.append(time.perf_counter() - t0)
        rates.append(s["ppo/tokens_per_s"])
        gen_rates.append(s["ppo/gen_tokens_per_s"])
        lengths.append(s["ppo/response_length"])
    rows.append(
        (
            f"PPO step (batch {cfg.batch_size}, {cfg.minibatches} minibatches, {cfg.ppo_epochs} epochs)",
            statistics.median(times),
            statistics.median(rates),
        )
    )
    print(rows[-1], flush=True)

    m = machine()
    lines = [
        "# Text PPO speed",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} cores, torch threads {m['torch threads']}, Python {m['python']}, "
        f"torch {m['torch']}, commit {m['commit']}, {m['date']}, load average {load:.1f} at the start (other jobs "
        "share the cores: compare rows of one table, not tables). Generated by `benchmarks/text_ppo_speed.py`.",
        "",
        f"Model: {label}, {sum(p.numel() for p in lm.parameters()) / 1e6:.2f} M parameters. Responses of up to "
        f"{cfg.response_length} tokens at temperature {cfg.temperature}; mean response length in the PPO steps "
        f"{statistics.mean(lengths):.1f} tokens. Tokens/s counts real response tokens; medians of "
        f"{args.repeats} generation batches and {args.steps} PPO steps. The PPO step's own generation ran at "
        f"{statistics.median(gen_rates):.0f} tokens/s.",
        "",
        "| what | s | response tokens/s |",
        "|---|---:|---:|",
        *(f"| {what} | {sec:.3f} | {rate:.0f} |" for what, sec, rate in rows),
    ]
    out = HERE / "results" / "text_ppo_speed.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
