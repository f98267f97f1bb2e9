"""Text RLHF: how well preference learning finetunes a language model, and where it over-optimizes.

For the tiny GPT (the full grid) and SmolLM2-135M (a reduced budget, stated in the table), on the sentiment
task: label budgets 250 / 500 / 1,000 / 2,000 / 4,000 (half offline on ρ's samples, half online on π's), PPO on
the oracle's own score as the upper line, and a sweep of fixed KL coefficients β for the over-optimization
curve; on the descriptive task, 2,000 labels beside the oracle line. Each run is an ordinary ``prefrl train``
run in its own process (so its peak memory is its own); finished runs are skipped, interrupted ones resume
from their checkpoints.

Writes ``benchmarks/results/text_rlhf.{csv,md}`` and ``text_rlhf_overopt.png``, ``text_rlhf_budgets.png``.

The summarize task (Ziegler et al.'s "labelers reward copying" finding in miniature, tiny GPT pretrained to
summarize, 2,000 and 8,000 labels, and PPO on the labeler's own score as the upper line) writes its own table,
``benchmarks/results/text_summarize.{csv,md}``, with copy rates of ρ and π.

    python benchmarks/text_rlhf.py                   # everything (about an hour on 2 cores)
    python benchmarks/text_rlhf.py --only tiny       # the tiny-GPT grid only (sentiment and descriptive)
    python benchmarks/text_rlhf.py --only tiny --seeds 0 1 2   # ... over three seeds (the tables keep every run)
    python benchmarks/text_rlhf.py --only summarize  # the summarize task only (a few minutes)
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TINY = ROOT / "experiments" / "text_sentiment_tiny.toml"
SMOL = ROOT / "experiments" / "text_sentiment_smollm2.toml"
SUMMARIZE = ROOT / "experiments" / "text_summarize_tiny.toml"
DESCRIPTIVE = ROOT / "experiments" / "text_descriptive_tiny.toml"
COLUMNS = [
    "task", "model", "method", "labels", "beta", "seed", "steps", "score", "judge", "rho_score", "rho_judge",
    "win_judge", "kl", "reward_model", "rm_acc_rho", "rm_acc_pi", "win_judge_kl6", "kl6_step", "wall_s", "peak_mb",
    "commit",
]  # fmt: skip
KEY = ["task", "model", "method", "labels", "beta"]  # one row of the summary table: the mean over seeds
MEANS = ["score", "judge", "win_judge", "kl", "rm_acc_rho", "rm_acc_pi", "win_judge_kl6", "wall_s"]


def markdown_table(columns: list[str], rows: list[dict]) -> list[str]:
    """The lines of a Markdown table of ``rows`` (dicts), one column per name in ``columns``."""
    head = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return head + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]


def grid(only: str, seeds: list[int], sweep_seeds: list[int] | None = None) -> list[dict]:
    """The runs of ``only`` for ``seeds``; the fixed-β sweep runs on ``sweep_seeds`` (default: the first seed)."""
    jobs: list[dict] = []
    if only in ("all", "tiny"):
        for seed in seeds:
            for labels in (4000, 2000, 1000, 500, 250):
                half = labels // 2
                sets = [f"labels.offline={half}", f"labels.online={labels - half}"]
                jobs.append(dict(task="sentiment", model="tiny", method="learned", labels=labels, beta="adaptive",
                                 seed=seed, exp=TINY, sets=sets))  # fmt: skip
            jobs.append(dict(task="sentiment", model="tiny", method="oracle", labels=0, beta="adaptive", seed=seed,
                             exp=TINY, sets=["reward_source='oracle'"]))  # fmt: skip
        for seed in sweep_seeds or seeds[:1]:
            for beta in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3):  # the over-optimization sweep: fixed β, 2,000 labels
                jobs.append(dict(task="sentiment", model="tiny", method="learned", labels=2000, beta=beta, seed=seed,
                                 exp=TINY, sets=["ppo.adaptive_kl=false", f"ppo.init_kl_coef={beta}"]))  # fmt: skip
    if only in ("all", "tiny", "descriptive"):
        for seed in seeds:
            jobs.append(dict(task="descriptive", model="tiny", method="learned", labels=2000, beta="adaptive",
                             seed=seed, exp=DESCRIPTIVE, sets=[]))  # fmt: skip
            jobs.append(dict(task="descriptive", model="tiny", method="oracle", labels=0, beta="adaptive", seed=seed,
                             exp=DESCRIPTIVE, sets=["reward_source='oracle'"]))  # fmt: skip
    if only in ("all", "smollm2"):  # the experiment's budget, and twice the labels with a longer, faster PPO
        jobs.append(dict(task="sentiment", model="smollm2", method="learned", labels=250, beta="adaptive",
                         seed=seeds[0], exp=SMOL, sets=[]))  # fmt: skip
        jobs.append(dict(task="sentiment", model="smollm2", method="learned", labels=500, beta="adaptive",
                         seed=seeds[0], exp=SMOL,
                         sets=["labels.offline=500", "ppo_steps=40", "ppo.lr=3e-5"]))  # fmt: skip
    for j in jobs:
        prefix = "" if j["task"] == "sentiment" else f"{j['task']}-"
        j["name"] = f"{prefix}{j['model']}-{j['method']}-{j['labels']}-b{j['beta']}-s{j['seed']}"
        j["sets"] = [*j["sets"], f"seed={j['seed']}"]
    return jobs


def execute(job: dict, runs: Path) -> Path:
    """Run (or resume, or skip when finished) one job in its own process; its run directory."""
    path = runs / job["name"]
    final = path / "final.json"
    if not final.exists():
        cmd = [sys.executable, "-m", "prefrl.cli", "train", str(job["exp"]), "--run-dir", str(path), "--no-progress"]
        if (path / "checkpoint" / "state.json").exists():
            cmd = [sys.executable, "-m", "prefrl.cli", "train", "--resume", str(path), "--no-progress"]
        else:
            cmd += [a for s in job["sets"] for a in ("--set", s)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        from prefrl.bench import machine_info

        (path / "bench.json").write_text(
            json.dumps(
                {
                    "peak_mb": round(max(peak, before) / 1024, 1),
                    "this_wall_s": time.perf_counter() - t0,
                    "commit": machine_info()["commit"],
                }
            )
        )
    return path


def run(job: dict, runs: Path) -> dict:
    path = execute(job, runs)
    result = json.loads((path / "final.json").read_text())
    extra = json.loads((path / "bench.json").read_text()) if (path / "bench.json").exists() else {}
    row = {k: job[k] for k in ("task", "model", "method", "labels", "beta", "seed")}
    row.update(steps=result["step"], wall_s=result["wall_s"], peak_mb=extra.get("peak_mb", ""))
    row["commit"] = extra.get("commit", "")
    for k in ("score", "judge", "rho_score", "rho_judge", "win_judge", "kl", "reward_model", "rm_acc_rho", "rm_acc_pi"):
        v = result.get(f"eval/{k}")
        row[k] = "" if v is None else round(float(v), 4)
    # The goal's point: the last evaluation whose KL(π‖ρ) is at most 6 nats, and π's win rate there.
    under = [t for t in trajectories(path) if float(t["eval/kl"]) <= 6.0 and int(t["step"]) > 0]
    row["win_judge_kl6"] = round(float(under[-1]["eval/win_judge"]), 4) if under else ""
    row["kl6_step"] = int(under[-1]["step"]) if under else ""
    return row


def trajectories(path: Path) -> list[dict]:
    with (path / "metrics.csv").open() as f:
        return [r for r in csv.DictReader(f) if r.get("eval/score")]


def plots(rows: list[dict], runs: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    sentiment = [r for r in rows if r["task"] == "sentiment" and r["model"] == "tiny"]
    sweep = [r for r in sentiment if r["beta"] != "adaptive"]
    betas = sorted({float(r["beta"]) for r in sweep})
    seeds = sorted({int(r["seed"]) for r in sweep})
    for r in sorted(sweep, key=lambda r: (float(r["beta"]), int(r["seed"]))):
        name = f"tiny-learned-2000-b{r['beta']}-s{r['seed']}"
        t = trajectories(runs / name)
        kl = [float(x["eval/kl"]) for x in t]
        colour = plt.cm.viridis(betas.index(float(r["beta"])) / max(len(betas) - 1, 1))  # one per β
        line = ("-", "--", ":")[seeds.index(int(r["seed"])) % 3]  # one per seed
        style = dict(marker="o", ms=3, color=colour, ls=line, label=f"β={r['beta']}, seed {r['seed']}")
        axes[0].plot(kl, [float(x["eval/judge"]) for x in t], **style)
        axes[1].plot(kl, [float(x["eval/reward_model"]) for x in t], **style)
        axes[2].plot(kl, [float(x["eval/rm_acc_pi"]) for x in t], **style)
    axes[0].set(xlabel="KL(π‖ρ), nats per response", ylabel="held-out judge (TextBlob polarity)",
                title="held-out judge vs KL")  # fmt: skip
    axes[1].set(xlabel="KL(π‖ρ), nats per response", ylabel="reward model (normalized on ρ)",
                title="reward model vs KL")  # fmt: skip
    axes[2].set(xlabel="KL(π‖ρ), nats per response", ylabel="pairs of π's responses ordered as the oracle",
                title="reward model's accuracy on π's samples vs KL")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_name("text_rlhf_overopt.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    budget = [r for r in sentiment if r["beta"] == "adaptive" and r["method"] == "learned"]
    xs = sorted({int(r["labels"]) for r in budget})
    for key, label in (("score", "oracle (VADER)"), ("judge", "held-out judge"), ("win_judge", "win rate vs ρ")):
        ys = [np.mean([float(r[key]) for r in budget if int(r["labels"]) == x]) for x in xs]
        ax.plot(xs, ys, marker="o", label=label)
    oracle = [r for r in sentiment if r["method"] == "oracle"]
    if oracle:
        mean = np.mean([float(r["score"]) for r in oracle])
        ax.axhline(mean, ls="--", c="k", lw=1, label="PPO on the oracle (VADER)")
    ax.set(xscale="log", xlabel="labels", ylabel="mean on held-out prompts", title="tiny GPT, sentiment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_name("text_rlhf_budgets.png"), dpi=110)
    plt.close(fig)


def mean_over_seeds(rows: list[dict], key: list[str] = KEY, means: list[str] = MEANS) -> list[dict]:
    """One row per setting (``key``): the number of seeds and each ``means`` column as mean ± std over seeds."""
    import numpy as np

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    out = []
    for values, members in groups.items():
        row = dict(zip(key, values, strict=True), seeds=len(members))
        for c in means:
            xs = [float(m[c]) for m in members if m[c] != ""]
            fmt = "{:.0f}" if c == "wall_s" else "{:.3f}"
            row[c] = "" if not xs else fmt.format(np.mean(xs)) + (f" ± {fmt.format(np.std(xs))}" if len(xs) > 1 else "")
        out.append(row)
    return out


def write_md(rows: list[dict], out: Path) -> None:
    from prefrl.bench import machine

    commits = sorted({r["commit"] for r in rows if r["commit"]})
    lines = [
        "# Text RLHF",
        "",
        "`python benchmarks/text_rlhf.py`. **Sentiment** task: the synthetic labeler prefers the response VADER "
        "scores higher; the held-out judge (TextBlob polarity) never trains anything. **Descriptive** task "
        "(`experiments/text_descriptive_tiny.toml`, 60 PPO steps): the labeler prefers the response denser in "
        "adjectives and adverbs (TextBlob's tagger); the held-out judge is TextBlob's lexicon subjectivity. Tiny "
        "GPT: 100 PPO steps of 64 responses, half the labels offline (ρ's samples), half online in 4 rounds "
        "(π's samples), adaptive β (from 0.1 towards 5 nats, horizon 1,000 responses) unless a fixed β is given; "
        "on sentiment the reward model's backbone trains at 1e-3 with 10 % of the labels held out "
        "(`experiments/text_sentiment_tiny.toml`), on descriptive at the defaults (1e-4, 1/e held out). "
        "SmolLM2-135M: reduced budget (250 offline labels, frozen reward backbone, 20 PPO steps of 16 responses "
        "of up to 16 tokens at learning rate 1e-5; the 500-label row: 40 PPO steps at 3e-5). `oracle` runs PPO "
        "on the labeler's own score (the upper line). All scores are "
        "means over the held-out prompts at the last evaluation; `win_judge` is how often π's response beats "
        "ρ's to the same prompt by the judge (ties ½); `rm_acc_*` is how often the reward model orders two "
        "responses to one prompt as the oracle does, on ρ's samples and on π's; `win_judge_kl6` is the win "
        "rate at the last evaluation (PPO step `kl6_step`) where KL(π‖ρ) was at most 6 nats.",
        "",
        "## Mean ± std over seeds",
        "",
        *markdown_table([*KEY, "seeds", *MEANS], mean_over_seeds(rows)),
        "",
        "## Every run",
        "",
        *markdown_table(COLUMNS, rows),
    ]
    lines += ["", "![over-optimization](text_rlhf_overopt.png) ![budgets](text_rlhf_budgets.png)", "",
              f"Machine: {machine()} (the table is written there; each run's own commit is in its row: "
              f"{', '.join(commits) or 'unknown'})."]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


# -- the summarize task ------------------------------------------------------------------------
SUMMARIZE_EVAL = [  # read from the run's last evaluation (``eval/<name>`` in final.json)
    "score", "rho_score", "judge", "rho_judge", "copy", "rho_copy", "verbatim", "rho_verbatim", "win_score",
    "win_judge", "kl", "rm_acc_rho", "rm_acc_pi",
]  # fmt: skip
SUMMARIZE_COLUMNS = ["model", "method", "labels", "seed", "steps", *SUMMARIZE_EVAL, "wall_s", "peak_mb", "commit"]
SUMMARIZE_KEY = ["model", "method", "labels"]
SUMMARIZE_MEANS = ["score", "judge", "copy", "verbatim", "win_score", "win_judge", "kl", "rm_acc_rho", "rm_acc_pi"]


def summarize_grid(seeds: list[int]) -> list[dict]:
    jobs = []
    for seed in seeds:
        for labels in (2000, 8000):
            half = labels // 2
            sets = [f"labels.offline={half}", f"labels.online={labels - half}"]
            jobs.append(dict(model="tiny-summarize", method="learned", labels=labels, seed=seed, sets=sets))
        jobs.append(dict(model="tiny-summarize", method="oracle", labels=0, seed=seed, sets=["reward_source='oracle'"]))
    for j in jobs:
        j.update(exp=SUMMARIZE, name=f"summarize-{j['method']}-{j['labels']}-s{j['seed']}")
        j["sets"] = [*j["sets"], f"seed={j['seed']}"]
    return jobs


def summarize_row(job: dict, runs: Path) -> dict:
    path = execute(job, runs)
    result = json.loads((path / "final.json").read_text())
    extra = json.loads((path / "bench.json").read_text()) if (path / "bench.json").exists() else {}
    row = {k: job[k] for k in ("model", "method", "labels", "seed")}
    row.update(steps=result["step"], wall_s=result["wall_s"], peak_mb=extra.get("peak_mb", ""))
    row["commit"] = extra.get("commit", "")
    for k in SUMMARIZE_EVAL:
        v = result.get(f"eval/{k}")
        row[k] = "" if v is None else round(float(v), 4)
    return row


def summary_samples(runs: dict[str, Path], n: int = 4) -> list[str]:
    """Markdown lines: ρ's (step 0) and each run's π's (last step) summaries of the first ``n`` held-out articles."""
    tables = {}
    for name, path in runs.items():
        with (path / "samples.csv").open() as f:
            rows = list(csv.DictReader(f))
        last = max(int(r["step"]) for r in rows)
        tables[name] = ([r for r in rows if int(r["step"]) == 0][:n], [r for r in rows if int(r["step"]) == last][:n])
    first = next(iter(tables.values()))[0]
    lines = []
    for i, rho in enumerate(first):
        lines += [f"- article: *{rho['prompt']}*", f"  - ρ: {rho['response']}"]
        lines += [f"  - π ({name}): {t[1][i]['response']}" for name, t in tables.items() if i < len(t[1])]
    return lines


def write_summarize(rows: list[dict], runs: Path, out: Path) -> None:
    from prefrl.bench import machine_info

    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARIZE_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Text RLHF: summarize by copying",
        "",
        "`python benchmarks/text_rlhf.py --only summarize` (`experiments/text_summarize_tiny.toml`). Ziegler et al. "
        "(2019) found that labelers checking summaries for accuracy rewarded copying, and the finetuned policies "
        "became smart copiers. Here an article is two corpus sentences followed by `tl;dr`; ρ is the tiny GPT "
        "pretrained on the corpus and on article-summary texts whose summaries copy a sentence (60 %), "
        "paraphrase or fuse the article in other words (30 %) or are unrelated (10 %); it learns copying "
        "imperfectly and copies a sentence word for word about a third of the time. The synthetic labeler "
        "(`score`, oracle `summary`) checks accuracy and coverage word by word against the article, giving a "
        "synonym a quarter of a copied word's credit; the held-out judge (`judge`, `abstractive`) counts "
        "synonyms in full and discounts copied trigrams. `copy` is the share of a summary's trigrams found in "
        "the article (1 − Ziegler's novel-trigram fraction), `verbatim` the share of summaries that are one of "
        "the article's sentences word for word; `rho_*` are ρ's. `win_*` is how often π's summary beats ρ's of "
        "the same article (ties ½), `kl` KL(π‖ρ) in nats per summary, `rm_acc_*` how often the reward model "
        "orders two summaries as the labeler does. 100 PPO steps of 64 summaries; half the labels on ρ's samples, "
        "half on π's in 4 rounds; the reward model's heads read the mean over the summary's tokens "
        '(`reward.pool = "mean"`), its backbone trains at 5e-4; adaptive β; `oracle` runs PPO on the labeler\'s own '
        "score. Means over 64 "
        "held-out articles, two summaries each, at the last evaluation.",
        "",
        "",
        "## Mean ± std over seeds",
        "",
        *markdown_table(
            [*SUMMARIZE_KEY, "seeds", *SUMMARIZE_MEANS], mean_over_seeds(rows, SUMMARIZE_KEY, SUMMARIZE_MEANS)
        ),
        "",
        "## Every run",
        "",
        *markdown_table(SUMMARIZE_COLUMNS, rows),
    ]
    done = {
        ("oracle reward" if r["method"] == "oracle" else f"learned reward, {r['labels']} labels"): runs
        / f"summarize-{r['method']}-{r['labels']}-s{r['seed']}"
        for r in rows
        if r["seed"] == rows[0]["seed"]
    }
    done = {k: v for k, v in done.items() if (v / "samples.csv").exists()}
    if done:
        lines += ["", f"Summaries of held-out articles by ρ and by π after the last PPO step (seed {rows[0]['seed']}):"]
        lines += ["", *summary_samples(done)]
    m = machine_info()
    lines += ["", "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()) + "."]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", choices=["all", "tiny", "descriptive", "smollm2", "summarize"], default="all")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--runs", type=Path, default=HERE / "runs" / "text_rlhf")
    p.add_argument("--out", type=Path, default=HERE / "results" / "text_rlhf.csv")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.only in ("all", "summarize"):
        summary_rows = []
        for job in summarize_grid(args.seeds):
            print(f"text_rlhf: {job['name']}", flush=True)
            summary_rows.append(summarize_row(job, args.runs))
            print(f"text_rlhf: {job['name']}: {summary_rows[-1]}", flush=True)
        target = args.out.with_name("text_summarize.md")
        write_summarize(summary_rows, args.runs, target)
        print(f"text_rlhf: wrote {target}")
        if args.only == "summarize":
            return
    for job in grid(args.only, args.seeds):
        print(f"text_rlhf: {job['name']}", flush=True)
        print(f"text_rlhf: {job['name']}: {run(job, args.runs)}", flush=True)
    # the tables hold every finished run of the whole grid, for the seeds asked and those run before
    found = {int(d.name.rsplit("-s", 1)[1]) for d in args.runs.glob("*-s*") if d.name.rsplit("-s", 1)[1].isdigit()}
    every = sorted(set(args.seeds) | found)
    jobs = grid("all", every, sweep_seeds=every)
    rows = [run(job, args.runs) for job in jobs if (args.runs / job["name"] / "final.json").exists()]
    with args.out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    write_md(rows, args.out)
    plots(rows, args.runs, args.out)
    print(f"text_rlhf: wrote {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
