"""Every family of fundamentals knobs goes through a real training job on real MNIST."""
import pytest

from nnfund_spark.config import load_config
from nnfund_spark.training.launcher import run_training

KNOB_SETS = {
    # MLP: leaky ReLU, L1+L2, batch norm (momentum 0.9), He init, standardized input, MSE (quadratic cost),
    # Nesterov momentum, step decay, augmentation, early stopping, dead-ReLU metric.
    "mlp_mse_nesterov": [
        "train.model=mlp", "train.model_options={units: [128, 64]}",
        "train.activation=leaky_relu", "train.activation_params={alpha: 0.1}",
        "train.l1=0.00001", "train.l2=0.0001", "train.normalization=batch",
        "train.bn_momentum=0.9",
        "train.initializer=he_normal", "train.input_normalization=standardize",
        "train.loss=mse", "train.optimizer=nesterov", "train.learning_rate=0.5",
        "train.optimizer_options={momentum: 0.8}", "train.schedule=step",
        "train.schedule_options={drop_every_epochs: 1, drop_factor: 0.5}",
        "train.augment={random_crop: 2, rotation: 5, translation: 0.05, scale: 0.05, noise: 4}",
        "train.early_stopping_patience=2", "train.dense_dropout=0.2"],
    # CNN: a small ResNet with group norm (4 groups), swish, one-hot labels with smoothing, Adamax,
    # exponential decay, [-1, 1] inputs, LeCun init.
    "resnet_swish_adamax": [
        "train.model=resnet", "train.model_options={depth: 8, width: 0.5}",
        "train.activation=swish", "train.normalization=group", "train.norm_groups=4",
        "train.initializer=lecun_normal",
        "train.input_normalization=symmetric", "train.one_hot=true", "train.label_smoothing=0.1",
        "train.optimizer=adamax", "train.learning_rate=0.004", "train.schedule=exponential",
        "train.schedule_options={decay_rate: 0.8}", "train.warmup_epochs=0.5"],
}


@pytest.mark.parametrize("name", sorted(KNOB_SETS))
def test_knob_family_trains_and_is_recorded(spark, small_mnist, tmp_path, name):
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [
        f"data.output_dir={out}", "train.num_proc=1", "train.epochs=3", "train.batch_size=32",
        f"tracking.tracking_uri={uri}", "tracking.experiment=knobs", "tracking.log_model=false",
        *KNOB_SETS[name]])
    summary = run_training(spark, config)
    assert summary["test_accuracy"] > 0.5, summary["history"]  # chance is 0.1
    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    import yaml

    from nnfund_spark.config import flatten
    for override in KNOB_SETS[name]:
        key, value = override.split("=", 1)
        # option mappings are logged flattened: train.model_options.units, ...
        for flat_key, expected in flatten({key: yaml.safe_load(value)}).items():
            logged = yaml.safe_load(run.data.params[flat_key])
            if isinstance(expected, float):
                assert float(logged) == pytest.approx(expected), flat_key
            else:
                assert logged == expected, flat_key
    rates = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "learning_rate"),
                                     key=lambda m: m.step)]
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]  # decays
    if name == "mlp_mse_nesterov":
        dead = client.get_metric_history(run.info.run_id, "dead_relu_fraction")
        assert dead == []  # leaky ReLU units are never "dead": no ReLU layer to watch
    names = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    activation = config.train.activation
    assert f"plots/activation_{activation}.png" in names


def test_relu_model_logs_dead_unit_fraction(spark, small_mnist, tmp_path):
    from mlflow.tracking import MlflowClient

    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(None, [
        f"data.output_dir={out}", "train.num_proc=1", "train.epochs=2", "train.model=lenet5",
        f"tracking.tracking_uri={uri}", "tracking.log_model=false",
        "tracking.log_artifacts=false"])
    summary = run_training(spark, config)
    history = MlflowClient(uri).get_metric_history(summary["run_id"], "dead_relu_fraction")
    assert sorted(m.step for m in history) == [1, 2]
    assert all(0.0 <= m.value < 1.0 for m in history)


# Every model, activation, optimizer, schedule, loss, normalization, initializer, input scaling
# and augmentation goes through at least one real (short) training job: a covering table, one
# job per row, so ten jobs exercise every choice.
COVER = [
    ("mlp", "step", "sgd", "constant", "categorical_crossentropy", "none", "glorot_uniform",
     "unit", "{}"),
    ("lenet5", "sigmoid", "momentum", "step", "mse", "batch", "glorot_normal", "symmetric",
     "{random_crop: 2}"),
    ("mnist_cnn", "tanh", "nesterov", "exponential", "categorical_crossentropy", "layer",
     "he_uniform", "standardize", "{flip: true}"),
    ("alexnet", "relu", "adagrad", "cosine", "categorical_crossentropy", "group", "he_normal",
     "unit", "{scale: 0.1}"),
    ("vgg", "leaky_relu", "adadelta", "constant", "categorical_crossentropy", "batch",
     "lecun_uniform", "unit", "{rotation: 10}"),
    ("inception", "elu", "rmsprop", "step", "mse", "none", "lecun_normal", "symmetric",
     "{translation: 0.1}"),
    ("resnet", "selu", "adam", "exponential", "categorical_crossentropy", "batch", "he_normal",
     "unit", "{noise: 8}"),
    ("mlp", "gelu", "adamax", "cosine", "categorical_crossentropy", "layer", "glorot_uniform",
     "unit", "{}"),
    ("lenet5", "swish", "nadam", "constant", "categorical_crossentropy", "none", "he_uniform",
     "unit", "{}"),
    ("convnet", "maxout", "adam", "cosine", "categorical_crossentropy", "none",
     "glorot_uniform", "unit", "{}"),
]
SMALL = {"alexnet": "{width: 0.25}", "vgg": "{depth: 11, width: 0.25}",
         "resnet": "{depth: 8, width: 0.5}", "mlp": "{units: [64]}", "inception": "{width: 0.25}"}


def test_cover_table_reaches_every_choice():
    from nnfund_spark.config import CHOICES, OPTIONAL_CHOICES
    from nnfund_spark.training.augment import AUGMENTATIONS
    columns = ["train.model", "train.activation", "train.optimizer", "train.schedule",
               "train.loss", "train.normalization", "train.initializer",
               "train.input_normalization"]
    for index, key in enumerate(columns):
        allowed = CHOICES.get(key) or OPTIONAL_CHOICES[key]
        assert {row[index] for row in COVER} == set(allowed), key
    import yaml
    used = set().union(*(yaml.safe_load(row[8]) for row in COVER))
    assert used == set(AUGMENTATIONS)


# What each choice must turn into inside the rank, written out here (not taken from the code):
# the optimizer's Keras class, momentum and Nesterov flag; the layer or activation function an
# activation becomes; the normalization layers; the kernel initializer's class; the input layer.
OPTIMIZER_BUILT = {"sgd": ("SGD", 0.0, False), "momentum": ("SGD", 0.9, False),
                   "nesterov": ("SGD", 0.9, True), "adagrad": ("Adagrad", 0.0, False),
                   "adadelta": ("Adadelta", 0.0, False), "rmsprop": ("RMSprop", 0.0, False),
                   "adam": ("Adam", 0.0, False), "adamax": ("Adamax", 0.0, False),
                   "nadam": ("Nadam", 0.0, False)}
ACTIVATION_BUILT = {"step": ("layer", "HeavisideStep"), "sigmoid": ("function", "sigmoid"),
                    "tanh": ("function", "tanh"), "relu": ("function", "relu"),
                    "leaky_relu": ("layer", "LeakyReLU"), "elu": ("layer", "ELU"),
                    "selu": ("function", "selu"), "gelu": ("function", "gelu"),
                    "swish": ("function", "swish"), "maxout": ("layer", "Maxout")}
NORMALIZATION_BUILT = {"none": set(), "batch": {"BatchNormalization"},
                       # layer normalization of a conv map is group normalization with one
                       # group; of a dense layer, Keras' LayerNormalization
                       "layer": {"LayerNormalization", "GroupNormalization"},
                       "group": {"GroupNormalization"}}
CONV_FREE = {"mlp"}  # models without conv layers
INITIALIZER_BUILT = {"glorot_uniform": "GlorotUniform", "glorot_normal": "GlorotNormal",
                     "he_uniform": "HeUniform", "he_normal": "HeNormal",
                     "lecun_uniform": "LecunUniform", "lecun_normal": "LecunNormal"}
INPUT_BUILT = {"unit": "Rescaling", "symmetric": "Rescaling", "standardize": "Normalization"}


@pytest.mark.parametrize("row", COVER, ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in COVER])
def test_every_choice_trains(spark, small_mnist, tmp_path, row):
    import math

    from mlflow.tracking import MlflowClient

    model, activation, optimizer, schedule, loss, norm, init, scaling, augment = row
    out, _ = small_mnist
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        f"data.output_dir={out}", "train.num_proc=1", "train.epochs=1", "train.batch_size=64",
        f"train.model={model}", f"train.activation={activation}", f"train.optimizer={optimizer}",
        f"train.schedule={schedule}", f"train.loss={loss}", f"train.normalization={norm}",
        f"train.initializer={init}", f"train.input_normalization={scaling}",
        f"train.augment={augment}", "train.learning_rate=0.01",
        f"tracking.tracking_uri={uri}", "tracking.log_model=false",
        "tracking.log_artifacts=false"]
    if model in SMALL:
        overrides.append(f"train.model_options={SMALL[model]}")
    if optimizer == "adadelta":
        overrides.append("train.learning_rate=1.0")
    summary = run_training(spark, load_config(None, overrides))
    run = MlflowClient(uri).get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.activation"] == activation
    assert math.isfinite(summary["history"]["loss"][0])
    # The rank trained what the row asked for.
    built = summary["ranks"][0]["built"]
    assert (built["optimizer"], built["momentum"], built["nesterov"]) == \
        pytest.approx(OPTIMIZER_BUILT[optimizer])
    kind, name = ACTIVATION_BUILT[activation]
    assert name in (built["layer_classes"] if kind == "layer" else built["activations"]), built
    norms = {"BatchNormalization", "LayerNormalization", "GroupNormalization"}
    expected = NORMALIZATION_BUILT[norm]
    if norm == "layer" and model in CONV_FREE:
        expected = {"LayerNormalization"}
    assert norms & set(built["layer_classes"]) == expected, built
    assert built["kernel_initializers"] == [INITIALIZER_BUILT[init]]
    assert INPUT_BUILT[scaling] in built["layer_classes"]
    assert built["loss"] == loss
    assert summary["test_count"] == 2000 and math.isfinite(summary["test_loss"])
    # 28 steps prove the choice runs end to end, not that it learns (sigmoid + MSE or a deep
    # batch-normalized net need more); learning is shown by the tests above and by the sweeps.
