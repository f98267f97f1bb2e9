"""The text RLHF loop: offline and online labels in the core store, PPO on the learned reward, resume, CLI."""

from __future__ import annotations

import csv
import fcntl
import json
import re
import sqlite3
import sys

import numpy as np
import pytest

from prefrl.cli import main
from prefrl.config import ConfigError
from prefrl.data import Comparison, ComparisonStore
from prefrl.text.rlhf import TextRun, _pair_accuracy, load_text_config, train_text

TINY = [
    "ppo_steps=4",
    "eval_every=2",
    "eval_prompts=16",
    "labels.offline=24",
    "labels.online=12",
    "labels.rounds=2",
    "reward.norm_samples=16",
    "reward.epochs=2",
    "ppo.batch_size=16",
    "ppo.minibatches=2",
    "ppo.ppo_epochs=2",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: 2 threads only add overhead


def labels_in(path) -> list[tuple]:
    with sqlite3.connect(path / "labels.sqlite") as db:
        return db.execute("SELECT * FROM comparisons ORDER BY rowid").fetchall()


def test_a_run_asks_offline_then_online_labels_of_same_prompt_responses_and_logs_the_curve(tmp_path):
    cfg = load_text_config(None, [*TINY, "labels.k=4", "labels.sampler='disagreement'"])
    result = train_text(cfg, tmp_path, progress=False)
    assert result["labels"] == 36 and result["step"] == 4
    with ComparisonStore(tmp_path / "labels.sqlite") as store:
        comps = store.comparisons()
        segs = store.segments({i for c in comps for i in c.segment_ids})
    assert all(isinstance(c, Comparison) and c.k == 4 for c in comps)
    for c in comps:  # every best-of-4 set answers one prompt: the four responses share their first observation
        firsts = {segs[i].obs[0].tobytes() for i in c.segment_ids}
        assert len(firsts) == 1
        scores = [segs[i].true_rewards.sum() for i in c.segment_ids]
        assert c.label == int(np.argmax(scores)) or scores.count(max(scores)) > 1  # the noiseless oracle's pick
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    evals = [r for r in rows if r.get("eval/score")]
    assert [int(r["step"]) for r in evals] == [0, 2, 4]
    assert float(evals[0]["eval/kl"]) == pytest.approx(0.0, abs=1e-4)  # π is ρ before the first update
    assert float(evals[0]["eval/win_judge"]) == pytest.approx(0.5, abs=0.25)
    for key in ("eval/judge", "eval/rm_acc_rho", "eval/rm_acc_pi", "ppo/kl", "reward/val_acc"):
        assert any(r.get(key) not in (None, "") for r in rows), key
    assert (tmp_path / "samples.csv").read_text().count("\n") > 8


def test_a_killed_run_resumes_from_its_checkpoint_with_every_label(tmp_path):
    cfg = load_text_config(None, TINY)
    full = train_text(cfg, tmp_path / "full", progress=False)
    short = load_text_config(None, [*TINY, "ppo_steps=2"])
    train_text(short, tmp_path / "cut", progress=False)  # "killed" after step 2: no final.json for 4 steps
    (tmp_path / "cut" / "final.json").unlink()
    before = labels_in(tmp_path / "cut")
    resumed = train_text(cfg, tmp_path / "cut", progress=False)
    after = labels_in(tmp_path / "cut")
    assert after[: len(before)] == before  # nothing paid for is lost or asked again
    assert resumed["labels"] == full["labels"] == 36
    assert resumed["step"] == 4


def test_oracle_reward_baseline_needs_no_labels_and_raises_the_score(tmp_path):
    cfg = load_text_config(
        None,
        [*TINY, "reward_source='oracle'", "ppo_steps=12", "eval_every=12", "ppo.init_kl_coef=0.01", "ppo.lr=3e-4"],
    )
    result = train_text(cfg, tmp_path, progress=False)
    assert result["labels"] == 0
    assert result["eval/score"] > result["eval/rho_score"] + 0.05  # PPO on the sentiment score itself
    assert not any(k.startswith("eval/rm_") for k in result)


def test_the_reward_holds_out_the_configured_share_of_labels(tmp_path):
    run = TextRun(load_text_config(None, [*TINY, "reward.val_fraction=0.0"]), tmp_path)
    run.ask(run.policy, 24)
    metrics = run.fit()
    assert metrics["reward/n_train"] == 24 and metrics["reward/n_val"] == 0  # every label trains the reward
    run = TextRun(load_text_config(None, [*TINY, "reward.val_fraction=0.5"]), tmp_path / "half")
    run.ask(run.policy, 24)
    assert 6 <= run.fit()["reward/n_val"] <= 18


def test_pair_accuracy_counts_orderings_and_leaves_out_true_ties():
    true = np.array([[1.0, 0.0, 2.0, 5.0], [0.0, 1.0, 2.0, 4.0]])
    pred = np.array([[0.3, 0.9, 0.0, 0.0], [0.1, 0.2, 1.0, 1.0]])
    assert _pair_accuracy(pred, true) == pytest.approx(1 / 3)  # column 0 agrees, 1 and 3 do not, 2 is a tie


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels.k=1", "labels.k = 1 must be >= 2"),
        ("oracle.scorer='happy'", "is not a text scorer"),
        ("labels.sampler='best'", "must be uniform, disagreement or entropy"),
        ("ppo.minibatches=5", "must divide batch_size"),
        ("labels.ofline=3", "did you mean 'labels.offline'"),
        ("reward.val_fraction=1.0", "reward.val_fraction = 1.0 must be in [0, 1)"),
    ],
)
def test_bad_text_configs_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_text_config(None, [override])


def test_a_text_run_asks_through_the_web_labeler_and_prefrl_label_serves_it(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text('kind = "text"\nname = "t"\ntask = "pick the happier reply"\n')
    run = tmp_path / "run"
    args = ["train", str(exp), "--run-dir", str(run), "--no-progress", "--simulate-labeler", "--port", "0"]
    assert main(args + [f"--set={o}" for o in TINY]) == 0
    assert "labeler at http://127.0.0.1:" in capsys.readouterr().err
    with sqlite3.connect(run / "labels.sqlite") as db:
        labelers = {r[0] for r in db.execute("SELECT labeler FROM comparisons")}
        asked = db.execute("SELECT COUNT(*) FROM queries").fetchone()[0]
    assert labelers == {"simulated-oracle"} and asked == 36  # every question went through the HTTP API
    assert load_text_config(run / "config.toml").oracle.kind == "human"
    assert main(["train", "--resume", str(run), "--oracle", "synthetic"]) == 2
    assert "the run was started with oracle.kind = 'human'" in capsys.readouterr().err

    import httpx

    from prefrl.labeler import LabelerProcess

    with LabelerProcess(run) as server:  # `prefrl label RUN` serves a text run: every question is answered
        r = httpx.post(server.url + "/api/next", json={"session": "0" * 32}, timeout=30)
        assert r.status_code == 200 and r.json()["query"] is None


def test_cli_trains_a_text_experiment_and_plots_it(tmp_path, capsys):
    exp = tmp_path / "exp.toml"
    exp.write_text('kind = "text"\nname = "t"\n')
    args = ["train", str(exp), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    assert main(args + [f"--set={o}" for o in TINY]) == 0
    err = capsys.readouterr().err
    assert "held-out score" in err and (tmp_path / "run" / "plots" / "text.png").stat().st_size > 10_000
    saved = load_text_config(tmp_path / "run" / "config.toml")
    assert saved.ppo_steps == 4 and "ppo_steps" in saved.overrides
    assert json.loads((tmp_path / "run" / "final.json").read_text())["labels"] == 36
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0  # finished: returns at once
    with open(tmp_path / "run" / "train.lock", "a+") as held:  # another process still holds it (e.g. writing plots)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert train_text(saved, tmp_path / "run", progress=False)["labels"] == 36  # a finished run needs no lock
    assert main(["train", str(exp), "--set", "labels.k=1"]) == 2
    assert "labels.k = 1 must be >= 2" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("scorer", "module", "package"),
    [("sentiment", "vaderSentiment", "vaderSentiment"), ("descriptive", "textblob", "textblob")],
)
def test_a_missing_oracle_package_stops_the_run_with_one_line(tmp_path, capsys, monkeypatch, scorer, module, package):
    from prefrl.text import oracles

    for name in [m for m in sys.modules if m.split(".")[0] == module] + [module]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it (or a submodule) now raises ImportError
    oracles._vader.cache_clear()
    oracles._pattern.cache_clear()
    exp = tmp_path / "exp.toml"
    exp.write_text(f'kind = "text"\nname = "t"\n[oracle]\nscorer = "{scorer}"\n')
    assert main(["train", str(exp), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("prefrl: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert f"the {package} package" in errors[0] and "pip install 'prefrl[text]'" in errors[0]
    assert not (tmp_path / "run" / "labels.sqlite").exists()  # stopped before anything was made
    oracles._vader.cache_clear()
    oracles._pattern.cache_clear()


def test_a_run_with_a_mean_pooled_reward_model_scores_responses_with_it(tmp_path):
    cfg = load_text_config(None, [*TINY, "reward.pool='mean'"])
    result = train_text(cfg, tmp_path, progress=False)
    assert result["step"] == 4 and 0.0 <= result["eval/rm_acc_rho"] <= 1.0
    assert load_text_config(tmp_path / "config.toml").reward.pool == "mean"
    with pytest.raises(ConfigError, match=r"reward.pool = 'max' must be one of last, mean"):
        load_text_config(None, ["reward.pool='max'"])
