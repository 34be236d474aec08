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
    ("train.input=disk", "train.input: 'disk' is not one of memory, stream"),
    ("train.stream_window=0", "train.stream_window: must be > 0"),
    ("data.validation_fraction=1.5", "data.validation_fraction: must be in [0, 1)"),
    ("train.dropout=1", "train.dropout: must be in [0, 1)"),
    ("data.seed=-1", "data.seed: must be >= 0, got -1"),
    ("train.seed=-3", "train.seed: must be >= 0, got -3"),
    ("train.epochs=1e3", "train.epochs: expected an integer, got 1000.0"),
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
    assert parse_override("spark.conf={a: 1}") == (["spark", "conf"], {"a": 1})
    assert parse_override("tracking.run_name=") == (["tracking", "run_name"], None)
    # YAML 1.1 reads an exponent without a dot as a string; a config means the number
    assert parse_override("train.learning_rate=3e-4") == (["train", "learning_rate"], 3e-4)
    assert parse_override("tracking.run_name=1e3x")[1] == "1e3x"


def test_set_into_a_mapping_sets_one_entry_and_keeps_the_others():
    config = load_config("conf/mnist_fast.yaml", [
        "train.model_options.filters=[16, 32]", "train.optimizer_options.weight_decay=1e-4",
        "spark.conf.spark.executor.memory=4g"])
    # dense_units from the file survives; a dotted Spark property is one key
    assert config.train.model_options == {"dense_units": 128, "filters": [16, 32]}
    assert config.train.optimizer_options == {"weight_decay": 1e-4}
    assert config.spark.conf == {"spark.executor.memory": "4g"}
    gpu = load_config("conf/gpu_cluster.yaml", ["spark.conf.spark.executor.memory=4g"])
    assert gpu.spark.conf["spark.executor.memory"] == "4g"
    assert gpu.spark.conf["spark.task.resource.gpu.amount"] == 1  # the file's keys stay
    # the whole mapping at once still replaces it
    whole = load_config("conf/mnist_fast.yaml", ["train.model_options={filters: [8, 16]}"])
    assert whole.train.model_options == {"filters": [8, 16]}
    with pytest.raises(ConfigError, match="train.epochs is a single value, not a mapping"):
        load_config(None, ["train.epochs.max=3"])
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        load_config(None, ["train.nope.x=1"])


def test_a_key_given_twice_is_refused_naming_the_file_and_lines(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 2\n  model: mlp\ndata:\n  limit: 10\n"
                     "train:\n  batch_size: 32\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'train' is given twice in one "
                                          r"mapping \(lines 1 and 6\)"):
        load_config(twice)
    inner = tmp_path / "inner.yaml"
    inner.write_text("train:\n  epochs: 2\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="key 'epochs' is given twice"):
        load_config(inner)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 2\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'train.epoch'"):
        load_config(typo)
    exponent = tmp_path / "exponent.yaml"
    exponent.write_text("train:\n  learning_rate: 3e-4\n")
    assert load_config(exponent).train.learning_rate == 3e-4


def test_flatten_gives_dotted_params():
    flat = flatten(to_dict(load_config(None, ["train.epochs=7"])))
    assert flat["train.epochs"] == 7
    assert flat["data.source"] == "mnist"
    assert "train" not in flat


def test_image_extension_pillow_cannot_read_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.extensions: \.heic is not an image format "
                                          r"Pillow reads"):
        load_config(None, ["data.source=image_folder", "data.extensions=['.png', '.heic']"])


@pytest.mark.parametrize("overrides, message", [
    (["train.optimizer_options={weight_decay: abc}"],
     "train.optimizer_options: optimizer 'adam': weight_decay must be a number in [0, inf), "
     "got 'abc'"),
    (["train.optimizer=rmsprop", "train.optimizer_options.centered=1"],
     "train.optimizer_options: optimizer 'rmsprop': centered must be true or false"),
    (["train.schedule=step", "train.schedule_options.drop_factor=-0.5"],
     "train.schedule_options: drop_factor must be a number > 0, got -0.5"),
    (["train.augment={rotation: -5}"],
     "train.augment: augmentation 'rotation': expected a number >= 0 or true/false, got -5"),
    (["train.augment.scale=1.5"], "train.augment: augmentation 'scale': must be a fraction below 1"),
    (["train.augment.random_crop=2.5"],
     "train.augment: augmentation 'random_crop': padding must be a whole number of pixels"),
])
def test_option_values_are_checked_before_anything_starts(overrides, message):
    """Values inside the option mappings are checked by the config, as the ranks would check
    them, so a bad one never waits for Spark, the dataset read and the rank launch."""
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
