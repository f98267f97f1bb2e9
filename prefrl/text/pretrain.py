"""Pretrain the tiny GPT on the shipped corpus: ``python -m prefrl.text.pretrain --out tiny_gpt.pt``.

Sentences are joined into one stream separated by ``<eos>``; each training example is a window of
``block_size`` tokens that starts at a sentence start, as a prompt does at generation time. A
held-out 5 % of the sentences measures validation loss.

``--summarize`` pretrains ρ for the summarize task instead: the corpus sentences mixed with
``article tl;dr summary`` texts whose summaries are copies, paraphrases, fusions or unrelated
sentences (:func:`prefrl.text.corpus.summary_examples`), over the corpus vocabulary plus ``tl;dr``.
So the model sometimes copies and sometimes abstracts. The shipped checkpoint
``prefrl/text/data/tiny_summarize.pt`` (``model = "tiny-summarize"`` in a text experiment) is::

    python -m prefrl.text.pretrain --summarize --examples 12000 --steps 6000 --seed 0 --half \\
        --out prefrl/text/data/tiny_summarize.pt

(:data:`SUMMARIZE_RECIPE`; the checkpoint stores the arguments it was made with as ``recipe``.)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from envs.text import DATA_DIR, EOS, WordTokenizer
from prefrl.text.model import GPT, GPTConfig, left_pad, save_checkpoint


def token_stream(sentences: list[str], tokenizer: WordTokenizer) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` ids of every sentence followed by ``<eos>``, and ``(S,)`` index of each sentence's first token."""
    ids, starts = [], []
    for s in sentences:
        starts.append(len(ids))
        ids.extend([*tokenizer.encode(s), EOS])
    return np.asarray(ids, dtype=np.int64), np.asarray(starts, dtype=np.int64)


def batch(
    stream: np.ndarray, starts: np.ndarray, *, batch_size: int, block_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, block)`` inputs and next-token targets, each window starting at a sentence start."""
    usable = starts[starts + block_size + 1 <= len(stream)]
    first = rng.choice(usable, size=batch_size)  # (B,)
    windows = stream[first[:, None] + np.arange(block_size + 1)]  # (B, block + 1)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]


def lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def pretrain(
    model: GPT,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    rng: np.random.Generator,
    log_every: int = 0,
) -> dict[str, float]:
    """Train ``model`` for ``steps`` AdamW steps (cosine learning rate); return first/last train and val loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    block = model.cfg.block_size
    metrics: dict[str, float] = {}

    def val_loss() -> float:
        if val is None:
            return math.nan
        vrng = np.random.default_rng(0)
        model.eval()
        with torch.no_grad():
            losses = [lm_loss(model, *batch(*val, batch_size=64, block_size=block, rng=vrng)).item() for _ in range(4)]
        model.train()
        return float(np.mean(losses))

    metrics["pretrain/val_loss_start"] = val_loss()
    model.train()
    t0 = time.monotonic()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = lm_loss(model, *batch(*train, batch_size=batch_size, block_size=block, rng=rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step == 0:
            metrics["pretrain/train_loss_start"] = loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{steps}  loss {loss.item():.3f}  {time.monotonic() - t0:.0f}s", flush=True)
    model.eval()
    metrics["pretrain/train_loss_end"] = loss.item()
    metrics["pretrain/val_loss_end"] = val_loss()
    metrics["pretrain/seconds"] = time.monotonic() - t0
    return metrics


SUMMARIZE_RECIPE = ("--summarize", "--examples", "12000", "--steps", "6000", "--seed", "0", "--half")
"""The arguments the shipped summarize checkpoint was made with (besides ``--out``; the rest are defaults)."""


def summarize_texts(
    sentences: list[str], *, examples: int, rng: np.random.Generator
) -> tuple[list[str], WordTokenizer]:
    """The corpus ``sentences`` and ``examples`` summarize texts, shuffled, and their vocabulary (with ``tl;dr``)."""
    from prefrl.text.corpus import summarize_tokenizer, summary_examples

    texts = [*sentences, *summary_examples(examples, rng=rng)]
    return [texts[i] for i in rng.permutation(len(texts))], summarize_tokenizer()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain the tiny GPT on the shipped corpus and write a checkpoint.")
    ap.add_argument("--out", type=Path, default=Path("tiny_gpt.pt"), help="checkpoint file to write")
    ap.add_argument("--corpus", type=Path, default=DATA_DIR / "corpus.txt")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--n-layer", type=int, default=3)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=32, help="context length (prompt + response)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--summarize", action="store_true", help="pretrain for the summarize task: corpus + article tl;dr summary"
    )
    ap.add_argument("--examples", type=int, default=12000, help="--summarize: article-summary texts to add")
    ap.add_argument("--half", action="store_true", help="store float16 weights (half the size)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tok = WordTokenizer.load()
    sentences = [s for s in args.corpus.read_text().splitlines() if s.strip()]
    if args.summarize:
        sentences, tok = summarize_texts(sentences, examples=args.examples, rng=np.random.default_rng(args.seed + 1))
    order = rng.permutation(len(sentences))
    n_val = max(1, len(sentences) // 20)
    val = token_stream([sentences[i] for i in order[:n_val]], tok)
    train = token_stream([sentences[i] for i in order[n_val:]], tok)

    model = GPT(
        GPTConfig(vocab_size=tok.vocab_size, n_layer=args.n_layer, n_embd=args.n_embd, block_size=args.block_size)
    )
    print(f"tiny GPT: {model.num_params() / 1e6:.2f} M parameters, {len(train[0])} training tokens")
    metrics = pretrain(
        model, train, val, steps=args.steps, batch_size=args.batch_size, lr=args.lr, rng=rng, log_every=100
    )
    save_checkpoint(args.out, model, words=tok.words, extra={"metrics": metrics})
    if args.half:
        from prefrl.text.lm import half_checkpoint

        given = list(sys.argv[1:] if argv is None else argv)
        if "--out" in given:  # the recipe is how to make it, not where it went
            del given[given.index("--out") : given.index("--out") + 2]
        half_checkpoint(args.out, args.out, recipe=given)
    print(" ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    prompts = ["the movie was", "my friend said", "yesterday the weather"]
    if args.summarize:
        from prefrl.text.corpus import article_prompt, generate_articles

        prompts = [article_prompt(a) for a in generate_articles(4, rng=np.random.default_rng(args.seed + 2))]
    ids, mask = left_pad([tok.encode(p) for p in prompts])
    gen = model.generate(
        ids,
        mask,
        max_new_tokens=min(16, args.block_size - ids.shape[1]),
        temperature=0.7,
        stop_tokens=tok.end_ids,
        generator=torch.Generator().manual_seed(0),
    )
    for p, g in zip(prompts, gen.tolist(), strict=True):
        print(f"  {p} | {tok.decode(g)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
