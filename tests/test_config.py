import math

import pytest

from prefrl.config import QUICKSTART, ConfigError, TrainConfig, load_config, parse_override, save_config
from prefrl.run import RunDir


def test_defaults_and_quickstart():
    cfg = load_config()
    assert cfg.env.id == "CartPole-v1"
    assert cfg.labels.total == QUICKSTART["labels"]["total"]
    assert cfg.baseline is True
    plain = load_config(base={})
    assert plain == TrainConfig()


def test_toml_names_only_what_differs(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('name = "p"\n[env]\nid = "Pendulum-v1"\n[labels]\ntotal = 50\nsampler = "uniform"\n')
    cfg = load_config(f, ["labels.total=75", "reward.hidden=[32, 32]", "oracle.beta=1"])
    assert cfg.env.id == "Pendulum-v1" and cfg.labels.sampler == "uniform"
    assert cfg.labels.total == 75 and cfg.reward.hidden == [32, 32]
    assert cfg.oracle.beta == 1.0 and isinstance(cfg.oracle.beta, float)
    assert cfg.oracle.overrides == ["beta"]
    assert cfg.reward.members == 3  # untouched default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("labels.totl=5", "unknown key 'labels.totl'; did you mean 'labels.total'"),
        ("lables.total=5", "did you mean 'labels'"),
        ("labels.total=many", "'labels.total' must be int, got 'many'"),
        ("labels.sampler=variance", "labels.sampler = 'variance' is not one of uniform, disagreement, entropy"),
        ("reward.epsilon=1.5", "reward.epsilon = 1.5 must be in"),
        ("oracle.gamma=0", "oracle.gamma = 0.0 must be in"),
        ("labels", "expected key=value"),
        ("env=3", "'env' is a section"),
    ],
)
def test_bad_config_gets_one_clear_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_toml_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_config(tmp_path / "missing.toml")


def test_parse_override_reads_toml_values():
    assert parse_override("a.b=1e-3") == {"a": {"b": 0.001}}
    assert parse_override("x=hello") == {"x": "hello"}
    assert parse_override("x=inf")["x"] == math.inf


def test_a_text_key_set_to_true_means_the_word():
    assert load_config(None, ["reward_source=true"]).reward_source == "true"
    with pytest.raises(ConfigError, match="reward_source"):
        load_config(None, ["reward_source=yes"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["oracle.epsilon=0.1", "env.kwargs={g = 9.81}"])
    run = RunDir(tmp_path / "run")
    run.save_config(cfg)
    back = run.load_config()
    assert back == cfg
    save_config(cfg, tmp_path / "c.toml")
    assert "epsilon = 0.1" in (tmp_path / "c.toml").read_text()


def test_a_runs_saved_config_is_an_experiment_file_for_a_variant(tmp_path):
    cfg = load_config(None, ["oracle.teacher=equal", "oracle.epsilon=0.1", "seed=3"])
    save_config(cfg, tmp_path / "config.toml")
    assert load_config(tmp_path / "config.toml") == cfg  # the explicitly set oracle keys come back too
    variant = load_config(tmp_path / "config.toml", ["agent.kwargs.ent_coef=0.01"])
    assert variant.agent.kwargs["ent_coef"] == 0.01 and variant.oracle == cfg.oracle and variant.seed == 3
