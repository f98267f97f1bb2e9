import csv
import math

import numpy as np
import pytest
from matplotlib.image import imread

from prefrl.plots import pearson, plot_comparison, plot_run, read_csv_columns, spearman

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER = [
    "timesteps",
    "wall_s",
    "labels/total",
    "rollout/true_return",
    "rollout/predicted_return",
    "reward/train_acc",
    "reward/val_acc",
    "reward/train_loss",
    "reward/val_loss",
    "eval/true_return",
]


def write_metrics(run_dir, *, n=25, steps=4096, offset=0, seed=0, header=HEADER):
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            t = offset + (i + 1) * steps
            row = {
                "timesteps": t,
                "wall_s": 1.5 * (i + 1),
                "labels/total": 50 * (i + 1),
                "rollout/true_return": 500 * (1 - math.exp(-i / 8)) + rng.normal(0, 10),
                "rollout/predicted_return": 3 * (1 - math.exp(-i / 8)) + rng.normal(0, 0.1),
                "reward/train_acc": min(0.99, 0.6 + 0.02 * i),
                "reward/val_acc": min(0.95, 0.55 + 0.02 * i),
                "reward/train_loss": 0.7 * math.exp(-i / 10),
                "reward/val_loss": 0.75 * math.exp(-i / 12),
                "eval/true_return": 480 * (1 - math.exp(-i / 8)) if i % 5 == 4 else "",  # evaluated now and then
            }
            if i in (3, 7):  # a chunk without finished episodes or without a fit
                row["rollout/true_return"] = row["reward/val_acc"] = ""
            w.writerow([row[k] for k in header])


def write_segments(run_dir, n=300):
    rng = np.random.default_rng(1)
    true = rng.uniform(0, 50, n)
    with open(run_dir / "segments.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true_return", "predicted_return"])
        for t in true:
            w.writerow([t, 0.1 * t + rng.normal(0, 0.5)])


def assert_good_png(path, min_w=400, min_h=300):
    assert path.exists() and path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h and w < 3000 and h < 3000
    assert float(img[..., :3].std()) > 0.01  # something was drawn


def test_plot_run_writes_every_plot(tmp_path):
    write_metrics(tmp_path)
    write_segments(tmp_path)
    paths = plot_run(tmp_path)
    names = {"returns.png", "labels.png", "reward_accuracy.png", "segments.png"}
    assert {p.name for p in paths} == names
    for p in paths:
        assert p.parent == tmp_path / "plots"
        assert_good_png(p)
    assert sorted(x.name for x in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files left


def test_plot_run_skips_plots_whose_columns_are_absent(tmp_path):
    write_metrics(tmp_path, header=["timesteps", "wall_s", "labels/total"])
    assert [p.name for p in plot_run(tmp_path)] == ["labels.png"]
    other = tmp_path / "only_predicted"
    write_metrics(other, header=["timesteps", "wall_s", "rollout/predicted_return"])
    (p,) = plot_run(other)
    assert p.name == "returns.png"
    assert_good_png(p)


def test_plot_run_on_a_directory_without_metrics(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory"):
        plot_run(tmp_path)


def test_read_csv_columns_turns_empty_cells_into_nan(tmp_path):
    write_metrics(tmp_path, n=10)
    cols = read_csv_columns(tmp_path / "metrics.csv")
    assert set(cols) == set(HEADER) and all(len(v) == 10 for v in cols.values())
    assert np.isnan(cols["rollout/true_return"][[3, 7]]).all()
    assert np.isfinite(cols["timesteps"]).all()


def test_correlations():
    x = np.arange(20.0)
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone: ranks agree exactly
    assert pearson(x, np.exp(x)) < 0.9
    assert spearman(x, -(x**3)) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties share ranks
    assert math.isnan(pearson(x, np.ones(20)))


def test_plot_comparison_averages_seeds_with_different_timesteps(tmp_path):
    seeds = []
    for s, (steps, offset) in enumerate([(4096, 0), (5000, 300), (3000, 1000)]):
        seeds.append(tmp_path / f"prefrl_s{s}")
        write_metrics(seeds[-1], steps=steps, offset=offset, seed=s)
    baseline = tmp_path / "ppo"
    write_metrics(baseline, seed=9)
    out = tmp_path / "compare" / "cartpole.png"
    got = plot_comparison(
        {"PPO, true reward": baseline, "prefrl, 100 labels": seeds}, out, title="CartPole-v1: true return"
    )
    assert got == out
    assert_good_png(out)


def test_plot_comparison_skips_runs_without_data_and_fails_when_nothing_is_left(tmp_path):
    good = tmp_path / "good"
    write_metrics(good)
    empty = tmp_path / "empty"
    write_metrics(empty, header=["timesteps", "wall_s"])
    out = tmp_path / "c.png"
    with pytest.warns(UserWarning) as record:
        plot_comparison({"a": [good, empty], "b": tmp_path / "missing"}, out, title="t")
    messages = " | ".join(str(w.message) for w in record)
    assert "empty/metrics.csv has no values for 'rollout/true_return'" in messages
    assert "missing/metrics.csv does not exist" in messages
    assert "no 'rollout/true_return' data for 'b'" in messages
    assert_good_png(out)
    with pytest.raises(ValueError, match="no run has data"), pytest.warns(UserWarning):
        plot_comparison({"a": empty}, tmp_path / "d.png", title="t")
