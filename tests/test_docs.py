"""The user guide: the site builds with no warning, the tutorials run and report sensible numbers, and every
example in the docstrings and on the pages runs as written."""

from __future__ import annotations

import csv
import dataclasses
import doctest
import importlib
import importlib.util
import json
import logging
import os
import pkgutil
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = ("custom_env", "replay_labels")


def _all_modules() -> list[str]:
    """Every module of the package; the dev install has every extra, so each of them imports."""
    import prefrl

    found = pkgutil.walk_packages(prefrl.__path__, prefix="prefrl.")
    return sorted(["prefrl", *(m.name for m in found)])


DOCTEST_MODULES = _all_modules()
# Modules whose docstrings must show at least one example (the rest may have none).
EXAMPLE_MODULES = {
    "prefrl.checkpoint",
    "prefrl.data",
    "prefrl.evaluation",
    "prefrl.export",
    "prefrl.io",
    "prefrl.oracles",
    "prefrl.reward",
    "prefrl.reward.losses",
    "prefrl.reward.normalize",
    "prefrl.run",
    "prefrl.segments",
    "prefrl.wrappers",
}


class Background:
    """The slow parts, started together in their own processes (one torch thread each) while other tests run."""

    def __init__(self, out: Path) -> None:
        self.out = out
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_MKDOCS_2_WARNING": "1"}
        self.procs = {
            name: subprocess.Popen(
                [sys.executable, str(DOCS / "tutorials" / f"{name}.py"), "--out", str(out / name)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for name in TUTORIALS
        }
        self.procs["site"] = subprocess.Popen(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out / "site")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.outputs: dict[str, str] = {}

    def wait(self, name: str) -> str:
        """Output of ``name`` once it finished; fails the test if it did not succeed."""
        if name not in self.outputs:
            proc = self.procs[name]
            self.outputs[name], _ = proc.communicate(timeout=900)
            if proc.returncode:
                pytest.fail(f"{name} exited with {proc.returncode}:\n{self.outputs[name][-4000:]}")
        return self.outputs[name]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module")
def background(tmp_path_factory: pytest.TempPathFactory):
    bg = Background(tmp_path_factory.mktemp("docs"))
    yield bg
    bg.stop()


def _load_hooks():
    spec = importlib.util.spec_from_file_location("prefrl_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- examples -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(background, one_torch_thread, name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 0 or name not in EXAMPLE_MODULES, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see above)"


def test_page_examples_run(one_torch_thread):
    """Every ``pycon`` block on a page runs, the blocks of one page in order, as one session."""
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    pages = 0
    for page in sorted(DOCS.rglob("*.md")):
        blocks = re.findall(r"^```pycon\n(.*?)^```", page.read_text(), flags=re.S | re.M)
        if blocks:
            pages += 1
            runner.run(parser.get_doctest("\n".join(blocks), {}, page.name, str(page), 0))
    result = runner.summarize(verbose=False)
    assert pages > 0 and result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} page examples failed (see above)"


# -- tutorials ------------------------------------------------------------------------------------


def test_custom_env_tutorial_learns_a_reward_for_its_own_environment(background):
    printed = background.wait("custom_env")
    out = background.out / "custom_env"
    summary = json.loads((out / "summary.json").read_text())
    run = out / "run"

    # The experiment file it wrote names the environment by module, and the run used it.
    assert tomllib.loads((out / "point_reach.toml").read_text())["env"]["id"] == "custom_env:PointReach-v0"
    assert tomllib.loads((run / "config.toml").read_text())["env"]["id"] == "custom_env:PointReach-v0"
    assert summary["labels"] == 40 and summary["timesteps"] == 4096
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["labels/total"]) == 40

    # What it reads back makes sense: a reward model that ranks held-out pairs better than chance and
    # segments like the true reward does, and returns within what the task can pay (-distance per step,
    # at most 2·√2 away, 50 steps). The agent's own return at this budget varies from run to run.
    assert 0.5 < summary["reward_val_acc"] <= 1.0
    assert summary["segment_return_correlation"] > 0.5
    for key in ("eval_true_return", "random_policy_return"):
        assert -50 * 2 * 2**0.5 <= summary[key] <= 0.0
    for name in ("returns.png", "labels.png", "reward_accuracy.png", "segments.png"):
        assert (run / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "true return" in printed and "random policy" in printed


def test_replay_tutorial_moves_every_label_into_the_second_run(background):
    printed = background.wait("replay_labels")
    out = background.out / "replay_labels"
    summary = json.loads((out / "summary.json").read_text())

    assert summary["exported"] == 30 == summary["npz_labels"]
    assert summary["npz_format"] == "prefrl-labels-1"
    assert summary["npz_segment_obs_shape"][1:] == [50, 3]  # Pendulum: 50-step segments of 3-d observations
    assert {"query_id", "segment_ids", "label", "preferred", "labeler"} <= set(summary["csv_columns"])
    with open(out / "A" / "labels.csv") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 30

    # B learned from A's labels alone: every comparison replayed, none asked about its own segments.
    assert summary["b_comparisons"] == 30 and summary["b_sources"] == {"replay": 30}
    assert summary["b_own_questions"] == 0
    config_b = tomllib.loads((out / "B" / "config.toml").read_text())
    assert config_b["oracle"]["kind"] == "replay" and config_b["seed"] == 1
    with open(out / "B" / "metrics.csv") as f:
        first_fit = next(csv.DictReader(f))
    assert int(first_fit["timesteps"]) == 0 and int(first_fit["labels/total"]) == 30
    assert float(first_fit["reward/n_train"]) + float(first_fit["reward/n_val"]) > 0
    assert "run B: 30 comparisons" in printed


# -- the site -------------------------------------------------------------------------------------


def test_site_builds_strictly_with_the_generated_pages(background):
    printed = background.wait("site")
    assert "WARNING" not in printed
    site = background.out / "site"

    # Command line: every subcommand and option of the real parser.
    hooks = _load_hooks()
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for name, _, sub in hooks._subcommands(hooks.cli_parser()):
        assert f"prefrl {name}" in cli_page
        for action in sub._actions:
            for option in action.option_strings:
                assert option in cli_page, f"prefrl {name} {option} is missing from the CLI reference"

    # Configuration: every key, with the default the code has today.
    from prefrl.config import TrainConfig

    config_page = (site / "reference" / "config" / "index.html").read_text()
    for section in [TrainConfig(), *(v for v in vars(TrainConfig()).values() if dataclasses.is_dataclass(v))]:
        for f in dataclasses.fields(section):
            if f.name != "overrides" and not dataclasses.is_dataclass(getattr(section, f.name)):
                assert f"<code>{f.name}</code>" in config_page, f"config key {f.name} is missing"
    total = TrainConfig().labels.total
    assert re.search(rf"<code>total</code></td>\s*<td><code>int</code></td>\s*<td><code>{total}</code>", config_page)

    # Results: every committed table, with its plot and data files beside it.
    results_page = (site / "results" / "index.html").read_text()
    for table in (ROOT / "benchmarks" / "results").glob("*.md"):
        assert f'id="results-{table.stem}"' in results_page, f"{table.name} is not on the results page"
    for asset in (ROOT / "benchmarks" / "results").glob("*.png"):
        assert (site / "results" / asset.name).read_bytes() == asset.read_bytes()

    # Tutorials embed the scripts the tests run; the API pages carry the docstring examples.
    assert "custom_env:PointReach-v0" in (site / "tutorials" / "custom_env" / "index.html").read_text()
    assert "ReplayOracle" in (site / "reference" / "api" / "oracles" / "index.html").read_text()
    assert not (ROOT / "site").exists() or (ROOT / "site").resolve() != site.resolve()


def test_results_without_machine_and_commit_are_flagged(tmp_path, caplog):
    """A results table must say where and at which commit it was measured; the strict build fails otherwise."""
    hooks = _load_hooks()
    (tmp_path / "fast.md").write_text("# Fast\n\n## Part\n\n| a |\n|---|\n| 1 |\n\nMachine: a laptop, commit abc1234\n")
    (tmp_path / "fast.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "slow.md").write_text("# Slow\n\nno provenance here, see [notes](notes.txt)\n")
    with caplog.at_level(logging.WARNING):
        page, assets = hooks.results_page(tmp_path)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "slow.md states no machine and commit" in warned[0]
    assert "| a laptop, commit abc1234 |" in page and "| not stated |" in page
    assert "## Fast {#results-fast}" in page and "### Part" in page  # headings one level down
    assert "![fast](results/fast.png)" in page and assets == [tmp_path / "fast.png"]
    assert "notes (`notes.txt`)" in page  # a link the site cannot carry becomes plain text
