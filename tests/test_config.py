import pytest

from nnfund_spark.config import ConfigError, flatten, load_config, parse_override, to_dict


def test_defaults_and_file_and_override(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochs: 3\n  learning_rate: 1\ndata:\n  source: fashion_mnist\n")
    config = load_config(conf, ["train.epochs=5", "train.optimizer=sgd"])
    assert config.train.epochs == 5          # override beats file
    assert config.train.learning_rate == 1.0  # int accepted for a float knob
    assert isinstance(config.train.learning_rate, float)
    assert config.data.source == "fashion_mnist"
    assert config.train.optimizer == "sgd"
    assert config.train.batch_size == 64      # untouched default


def test_repo_conf_files_load():
    from pathlib import Path
    conf = Path(__file__).parents[1] / "conf"
    files = sorted(conf.glob("*.yaml")) + sorted((conf / "examples").glob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("train.epoch=2", "unknown config key 'train.epoch'"),
    ("trian.epochs=2", "unknown config key 'trian'"),
    ("train.epochs=two", "train.epochs: expected an integer, got 'two'"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("train.scale_lr_by_workers=1", "expected true or false"),
    ("train.optimizer=adamw", "train.optimizer: 'adamw' is not one of sgd, momentum"),
    ("data.source=cifar", "data.source: 'cifar' is not one of"),
    ("train.epochs=0", "train.epochs: must be > 0"),
    ("train.backward_passes_per_step=0", "train.backward_passes_per_step: must be > 0"),
    ("train.steps_per_execution=0", "train.steps_per_execution: must be > 0"),
    ("train.bn_momentum=1.0", "train.bn_momentum: must be in [0, 1)"),
    ("train.norm_groups=0", "train.norm_groups: must be >= 1"),
    ("train.controller=nccl", "train.controller: 'nccl' is not one of auto, gloo, mpi"),
    ("data.validation_fraction=1.5", "data.validation_fraction: must be in [0, 1)"),
    ("train.dropout=1", "train.dropout: must be in [0, 1)"),
    ("epochs=2", "must name a section and a key"),
    ("train.epochs", "must look like section.key=value"),
    ("train=3", "must name a section"),
])
def test_bad_overrides_are_rejected_with_the_key_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_section_given_a_scalar_is_rejected(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("train: 3\n")
    with pytest.raises(ConfigError, match="train: expected a mapping"):
        load_config(conf)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_override_parses_yaml_values():
    assert parse_override("spark.conf={a: 1}") == {"spark": {"conf": {"a": 1}}}
    assert parse_override("tracking.run_name=") == {"tracking": {"run_name": None}}


def test_flatten_gives_dotted_params():
    flat = flatten(to_dict(load_config(None, ["train.epochs=7"])))
    assert flat["train.epochs"] == 7
    assert flat["data.source"] == "mnist"
    assert "train" not in flat
