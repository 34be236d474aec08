"""Typed job configuration: dataclass defaults, YAML files that hold only what differs, and
dotted command-line overrides (``--set train.epochs=2``), all validated at one door.

Unknown keys and wrong types are rejected with a ``ConfigError`` naming the key, so a typo in a
sweep never silently trains with a default.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

# Name lists only (no TensorFlow import): the valid choices error messages list.
from nnfund_spark.fundamentals.activations import ACTIVATIONS, resolve_parameters
from nnfund_spark.models.blocks import INITIALIZERS, NORMALIZATIONS
from nnfund_spark.models.zoo import MODELS
from nnfund_spark.training.augment import AUGMENTATIONS, INPUT_NORMALIZATIONS
from nnfund_spark.training.optimizers import LOSSES, OPTIMIZERS, optimizer_hyperparameters
from nnfund_spark.training.schedules import SCHEDULES


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the offending key."""


class _Loader(yaml.SafeLoader):
    """YAML as a config means it: a key given twice in one mapping is an error (PyYAML would
    keep the last silently, dropping a whole section), and 1e-3 is a number (YAML 1.1, which
    PyYAML implements, reads exponents without a dot as strings)."""

    yaml_implicit_resolvers = {first: list(resolvers) for first, resolvers
                               in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # an unhashable key: SafeLoader's own error names it
            if key in seen:
                raise ConfigError(f"key '{key}' is given twice in one mapping (lines "
                                  f"{seen[key] + 1} and {key_node.start_mark.line + 1}); "
                                  f"merge the two into one")
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str):
    """Parse config-like YAML (config files, sweep files, --set values) with ``_Loader``."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


@dataclass
class DataConfig:
    # Which source reader to use (CHOICES["data.source"]); each has its own raw file layout.
    source: str = "mnist"
    # Where the raw files live: IDX files (mnist / fashion_mnist), CIFAR-10 batches (cifar10),
    # root/<class_name>/*.jpg|png (image_folder); unused by digits. Relative paths resolve
    # against the working directory, so `make demo` and spark-submit from the repo agree.
    raw_dir: str = "data/raw/mnist"
    # Fetch the raw files from the canonical mirrors when missing (checksum-verified; mnist and
    # fashion_mnist only: the other sources have no stable per-file checksums to verify against).
    download: bool = False
    # IDX sources must match the published SHA-256 of each file, which catches truncated or
    # tampered downloads; false accepts other MNIST-format IDX files (labels are still checked).
    verify_checksums: bool = True
    # CIFAR-10 layout: "python" (pickled data_batch_N), "binary" (data_batch_N.bin) or "auto"
    # (whichever is present, python first) so both official archives work unconfigured.
    cifar_format: str = "auto"
    # The Petastorm dataset root; splits land in <output_dir>/{train,validation,test}.
    output_dir: str = "data/petastorm/mnist"
    # Held out of the training pool for per-epoch validation; 10% is the usual MNIST choice
    # (54k/6k) and leaves an official test split untouched.
    validation_fraction: float = 0.1
    # Sources without an official test split (image_folder, digits): the stratified share held
    # out as test before validation is taken; 20% gives digits ~360 test images (about +-1.5%
    # accuracy resolution) while keeping most data for training.
    test_fraction: float = 0.2
    # Split seed: the same seed gives the same split membership, byte for byte.
    seed: int = 42
    # Image storage: "png" (lossless, ~2-4x smaller for small images) or "ndarray" (raw uint8,
    # no decode cost when reading).
    image_codec: str = "png"
    # "keep": no conversion, and all images must share one channel count (image folders: files
    # with the less common count are bad input); "grayscale" / "rgb" convert every image. keep
    # is the default because every built-in source is already uniform.
    color_mode: str = "keep"
    # Resize target [height, width] for image_folder (fixed-size sources keep their own size).
    # 64x64 keeps a PNG row at a few KB and suits the curriculum's small CNNs.
    image_size: list = field(default_factory=lambda: [64, 64])
    # File extensions read from class folders (case-insensitive); anything else there is bad
    # input. JPEG and PNG are what cameras, scrapers and dataset archives produce.
    extensions: list = field(default_factory=lambda: [".jpg", ".jpeg", ".png"])
    # Share of bad input items (corrupt files, unsupported formats, out-of-range labels, ...)
    # that may be skipped and listed in the manifest. 0: any bad item fails the job, so data
    # problems are never hidden unless the user opts in.
    max_bad_fraction: float = 0.0
    # Parquet row-group target. Small enough that a 2-rank job gets several row groups per
    # shard; large enough that reads are not dominated by per-group overhead.
    row_group_size_mb: int = 4
    # At least this many row groups per split (fewer only if the split has fewer images).
    # Horovod ranks get whole row groups, so a split serves at most this many ranks when its
    # size does not already call for more groups: raise it to train on more ranks.
    min_row_groups: int = 16
    # Replace an existing dataset at output_dir; off so a typo cannot destroy prepared data.
    overwrite: bool = False
    # Use only the first N images of each official split (0 = all); sources without official
    # splits: the first N of the source (image_folder: the first N files of each class).
    # For tests and smoke runs.
    limit: int = 0


def _validate_data(data: DataConfig) -> None:
    """data.* checks that CHOICES and the shared positive/non-negative checks cannot express."""
    for dotted, value in {"data.test_fraction": data.test_fraction,
                          "data.max_bad_fraction": data.max_bad_fraction}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{dotted}: must be in [0, 1), got {value}")
    size = data.image_size
    if (not isinstance(size, list) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ConfigError(f"data.image_size: expected [height, width] with two positive "
                          f"integers, got {size!r}")
    exts = data.extensions
    if (not isinstance(exts, list) or not exts
            or not all(isinstance(e, str) and e.startswith(".") and len(e) > 1 for e in exts)):
        raise ConfigError(f"data.extensions: expected a non-empty list like ['.jpg', '.png'], "
                          f"got {exts!r}")
    if data.source == "image_folder":
        from nnfund_spark.data.images import formats_for
        try:
            formats_for(exts)  # an extension Pillow cannot read, refused before Spark starts
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if data.download and data.source not in ("mnist", "fashion_mnist"):
        raise ConfigError(f"data.download: only mnist and fashion_mnist can be downloaded, not "
                          f"'{data.source}'; put its files under data.raw_dir")


@dataclass
class TrainConfig:
    # Model from the zoo (nnfund_spark.models.MODELS).
    model: str = "mnist_cnn"
    # Options of that model only: units (mlp), depth and width (vgg, resnet), shortcut (resnet).
    model_options: dict = field(default_factory=dict)
    # Hidden-layer activation (nnfund_spark.fundamentals.activations.ACTIVATIONS) and its
    # parameters, e.g. {alpha: 0.1} for leaky_relu, {pieces: 2} for maxout.
    activation: str = "relu"
    activation_params: dict = field(default_factory=dict)
    # Weight penalties on every kernel; both > 0 gives L1+L2 (elastic net).
    l1: float = 0.0
    l2: float = 0.0
    # none | batch | layer | group, between each conv/dense layer and its activation.
    # None = the model's own choice (resnet: batch, others: none).
    normalization: Optional[str] = None
    # Groups of "group" normalization (gcd with each layer's channels); None = 8.
    norm_groups: Optional[int] = None
    # Batch normalization's moving-average momentum: the share of the moving mean/variance kept
    # each step; None = 0.99 (Keras'). Lower it (e.g. 0.9) for runs of few steps.
    bn_momentum: Optional[float] = None
    # glorot_uniform | glorot_normal | he_uniform | he_normal | lecun_uniform | lecun_normal.
    # None = the model's own choice (Glorot, He for resnet).
    initializer: Optional[str] = None
    # Raw pixels -> network input inside the model: unit [0,1], symmetric [-1,1], or
    # standardize with the manifest's training mean/std.
    input_normalization: str = "unit"
    # categorical_crossentropy (integer labels; one_hot for label smoothing) or mse on one-hot
    # targets (the course's quadratic cost). Validation/test loss is always cross-entropy, so
    # runs with different training losses stay comparable.
    loss: str = "categorical_crossentropy"
    one_hot: bool = False
    label_smoothing: float = 0.0
    # Horovod ranks, one barrier task each. 2 fills this project's 2-core reference machine;
    # 0 = every slot the cluster has (GPU slots with GPU scheduling on, else task slots).
    num_proc: int = 2
    # Cap for num_proc=0 (0 = no cap): more ranks than the data has row groups starve some.
    max_num_proc: int = 0
    epochs: int = 6
    # Per-rank batch; the global batch is batch_size * num_proc.
    batch_size: int = 64
    optimizer: str = "adam"
    # That optimizer's hyperparameters (momentum, rho, beta_1, beta_2, epsilon, ...); unknown
    # names are rejected with the accepted ones listed.
    optimizer_options: dict = field(default_factory=dict)
    # Base rate for one worker; scaled by the number of ranks when scale_lr_by_workers is on
    # (Goyal et al. 2017: keep lr / global batch constant).
    learning_rate: float = 0.001
    scale_lr_by_workers: bool = True
    # Linear warm-up to the scaled rate over these epochs, which keeps the first large-rate
    # steps from blowing up the freshly initialised network.
    warmup_epochs: float = 1.0
    # After warm-up: constant | step | exponential | cosine. Cosine needs no tuning beyond its
    # floor and was the fastest route to 99% on MNIST here.
    schedule: str = "cosine"
    # Cosine: decay from the peak to this fraction of it by the last epoch.
    final_lr_fraction: float = 0.05
    # Other schedules' parameters: drop_every_epochs / drop_factor (step), decay_rate
    # (exponential, per epoch).
    schedule_options: dict = field(default_factory=dict)
    # Dropout after conv blocks / before dense layers; None = the model's own default
    # (mnist_cnn: 0.25 / 0.5, as in the series).
    dropout: Optional[float] = None
    dense_dropout: Optional[float] = None
    # Training-split augmentation, e.g. {random_crop: 2, flip: true, rotation: 10,
    # translation: 0.1, scale: 0.1, noise: 8.0}; empty = none (flip is wrong for digits).
    augment: dict = field(default_factory=dict)
    # Stop when early_stopping_metric has not improved for this many epochs (0 = off).
    early_stopping_patience: int = 0
    early_stopping_metric: str = "val_loss"
    # Per epoch, the fraction of ReLU units that never fire on a validation batch (rank 0).
    log_dead_relu: bool = True
    # Global seed for weights, shuffling and dropout; a rank adds its rank, an epoch its index.
    seed: int = 42
    # TensorFlow intra-op threads per rank; 0 = cores on this host / ranks on this host.
    intra_op_threads: int = 0
    # Bind each rank's process to its own share of the host's cores (local rank k of n gets
    # cores k*c/n .. (k+1)*c/n - 1 of the c it may use). For CPU training: ranks then never
    # contend for a core, and "1 rank" means exactly one core's share. Off by default: an
    # executor that also runs other tasks would see them squeezed.
    cpu_binding: bool = False
    # With cpu_binding: cores per rank (0 = an equal share of the host's cores); e.g. 1 gives
    # a single rank exactly one core, for like-for-like throughput comparisons.
    cores_per_rank: int = 0
    # Stop as soon as target_split's accuracy (evaluated on all ranks after every epoch) reaches
    # this value; None = train all epochs. target_split "test" is the time-to-accuracy
    # benchmark protocol (DAWNBench): it tunes on the test set, so use it for benchmarks only.
    target_accuracy: Optional[float] = None
    target_split: str = "validation"
    # Seconds Horovod waits for all ranks to start before failing instead of hanging.
    start_timeout: int = 120
    # Rank 0 writes model + optimizer state here after every epoch (None = no checkpoints).
    # Must be visible to every rank: a local path in local mode, /dbfs/... or NFS on clusters.
    checkpoint_dir: Optional[str] = None
    # Continue the run whose checkpoints are in checkpoint_dir (same MLflow run, next epoch).
    resume: bool = False
    # Print a Keras progress line per epoch on rank 0 (other ranks are always quiet).
    verbose: int = 2
    # GPU only: float16 compute with float32 master weights; ~2x on tensor-core GPUs, and slower
    # than float32 on CPUs, hence off by default.
    mixed_precision: bool = False
    # Compile the train step with XLA; helps on GPUs, compile time dominates short CPU runs.
    xla: bool = False
    # Send gradients as float16 in the allreduce: halves network bytes, tiny precision cost.
    fp16_allreduce: bool = False
    # Local gradient accumulation (Horovod's backward_passes_per_step): each rank sums the
    # gradients of this many batches and the ranks exchange and apply their average once, so
    # the allreduce runs once per k batches. The effective global batch becomes
    # batch_size x k x ranks (the learning rate is not rescaled for k). 1 = exchange every step.
    backward_passes_per_step: int = 1
    # Train steps Keras runs inside one call of the compiled train function (Keras'
    # steps_per_execution): the Python loop, callbacks' batch hooks and the progress bar then
    # run once per this many steps instead of after each. The weights are the same as with 1;
    # only the per-step Python overhead goes. With 32, the MNIST convnet on one CPU core ran
    # 7-9 % faster, two ranks 5-19 % (README). An epoch's last call runs only the steps left.
    steps_per_execution: int = 32
    # How ranks find each other and reduce: "gloo" (TCP; needs nothing beyond Horovod), "mpi"
    # (mpirun; Horovod built with HOROVOD_WITH_MPI=1 and Open MPI on every node), or "auto":
    # mpi when the driver's Horovod has MPI and mpirun is on its PATH, else gloo (Horovod's own
    # preference). On one host MPI reduces through shared memory: 2 one-core MNIST ranks ran
    # 24-52 % faster than with Gloo here. GPU clusters reduce with NCCL either way.
    controller: str = "auto"
    # Where a rank's training examples live during the run: "memory" reads its shard once,
    # decoded, and keeps it (fastest; the shard must fit in the executor's memory); "stream"
    # reads and decodes it again every epoch, stream_window row groups at a time, for shards
    # that do not fit (validation and test shards are still held in memory).
    input: str = "memory"
    # With input "stream": row groups decoded and shuffled together (the memory held, and
    # how far the shuffle reaches: 4 of MNIST's 16 training row groups is a quarter of it).
    stream_window: int = 4


@dataclass
class TrackingConfig:
    # None: MLFLOW_TRACKING_URI when set, else an embedded SQLite store ./mlflow.db.
    tracking_uri: Optional[str] = None
    experiment: str = "nnfund_spark"
    run_name: Optional[str] = None
    # Log the trained Keras model (MLflow TensorFlow flavor, with signature) as "model".
    log_model: bool = True
    # Log figures and tables: learning curves, confusion matrix, model summary, conv filters
    # and activation maps. Off only to save seconds in large sweeps.
    log_artifacts: bool = True


@dataclass
class SparkConfig:
    # None: keep whatever spark-submit / the cluster set; Spark's local[*] when run as a
    # plain script.
    master: Optional[str] = None
    app_name: str = "nnfund_spark"
    # Extra Spark properties (e.g. GPU resource settings), passed through verbatim.
    conf: dict = field(default_factory=dict)


@dataclass
class JobConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)


# Allowed values for string knobs; checked in validate() so errors list the valid choices.
CHOICES = {
    "data.source": ("mnist", "fashion_mnist", "cifar10", "image_folder", "digits"),
    "data.image_codec": ("png", "ndarray"),
    "data.cifar_format": ("auto", "python", "binary"),
    "data.color_mode": ("keep", "grayscale", "rgb"),
    "train.optimizer": OPTIMIZERS,
    "train.model": tuple(sorted(MODELS)),
    "train.activation": ACTIVATIONS,
    "train.input_normalization": INPUT_NORMALIZATIONS,
    "train.loss": LOSSES,
    "train.schedule": SCHEDULES,
    "train.early_stopping_metric": ("val_loss", "val_accuracy"),
    "train.target_split": ("validation", "test"),
    "train.controller": ("auto", "gloo", "mpi"),
    "train.input": ("memory", "stream"),
}
OPTIONAL_CHOICES = {"train.normalization": NORMALIZATIONS, "train.initializer": INITIALIZERS}


def _validate_train(train: "TrainConfig") -> None:
    """Names inside the train.* option mappings, checked before anything trains."""
    from nnfund_spark.models.blocks import COMMON_OPTIONS
    from nnfund_spark.models.zoo import model_options
    from nnfund_spark.training.schedules import schedule_parameters

    for dotted, allowed in OPTIONAL_CHOICES.items():
        value = getattr(train, dotted.split(".")[1])
        if value is not None and value not in allowed:
            raise ConfigError(f"{dotted}: '{value}' is not one of {', '.join(allowed)}")
    own = sorted(set(model_options(train.model)) - set(COMMON_OPTIONS))
    checks = {
        "train.model_options": (train.model_options, own, f"model {train.model}"),
        "train.optimizer_options": (train.optimizer_options,
                                    sorted(optimizer_hyperparameters(train.optimizer)),
                                    f"optimizer {train.optimizer}"),
        "train.schedule_options": (train.schedule_options,
                                   sorted(set(schedule_parameters(train.schedule))
                                          - {"final_lr_fraction"}),
                                   f"schedule {train.schedule}"),
        "train.augment": (train.augment, list(AUGMENTATIONS), "augmentation"),
    }
    for dotted, (values, accepted, owner) in checks.items():
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise ConfigError(f"{dotted}: {owner} does not take {', '.join(unknown)}; "
                              f"accepted: {', '.join(accepted) or 'nothing'}")
    try:
        resolve_parameters(train.activation, train.activation_params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"train.activation_params: {exc}") from exc
    # The option values, checked as the ranks will check them, before Spark starts.
    from nnfund_spark.training.augment import checked_strengths
    from nnfund_spark.training.optimizers import check_hyperparameter
    from nnfund_spark.training.schedules import checked_schedule
    value_checks = [("train.optimizer_options",
                     lambda: [check_hyperparameter(train.optimizer, key, value)
                              for key, value in train.optimizer_options.items()]),
                    ("train.schedule_options",
                     lambda: checked_schedule(train.schedule, train.schedule_options)),
                    ("train.augment", lambda: checked_strengths(train.augment))]
    for dotted, check in value_checks:
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{dotted}: {exc}") from exc
    if train.label_smoothing and not train.one_hot:
        raise ConfigError("train.label_smoothing needs train.one_hot=true (it smooths one-hot "
                          "targets)")
    for dotted, value in {"train.l1": train.l1, "train.l2": train.l2,
                          "train.early_stopping_patience": train.early_stopping_patience}.items():
        if value < 0:
            raise ConfigError(f"{dotted}: must be >= 0, got {value}")
    if train.cores_per_rank and not train.cpu_binding:
        raise ConfigError("train.cores_per_rank only applies with train.cpu_binding=true")
    if train.target_accuracy is not None and not 0 < train.target_accuracy <= 1:
        raise ConfigError(f"train.target_accuracy: must be in (0, 1] or null, "
                          f"got {train.target_accuracy}")
    if not 0 <= train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {train.label_smoothing}")


def _check_type(dotted: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{dotted}: expected true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{dotted}: expected an integer, got {value!r}")
    if annotation in (float, str, dict) and not isinstance(value, annotation):
        raise ConfigError(f"{dotted}: expected {annotation.__name__}, got {value!r}")
    return value


def _apply(obj: Any, values: dict, prefix: str = "") -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    for key, value in values.items():
        _set(obj, key, value, prefix)


def _set(obj: Any, key: str, value: Any, prefix: str) -> None:
    """Set one field of the dataclass obj from a config value (a section: each of its keys)."""
    known = {f.name for f in dataclasses.fields(obj)}
    dotted = f"{prefix}{key}"
    if key not in known:
        raise ConfigError(f"unknown config key '{dotted}'; valid keys here: "
                          f"{', '.join(sorted(prefix + k for k in known))}")
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        _apply(current, value, dotted + ".")
    else:
        setattr(obj, key, _check_type(dotted, value, typing.get_type_hints(type(obj))[key]))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.epochs=2' -> (['train', 'epochs'], 2); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw = text.split("=", 1)
    parts = [p for p in dotted.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override '{text}' must name a section and a key, e.g. train.epochs=2")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"override '{text}': {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return parts, value


def _apply_override(config: "JobConfig", text: str) -> None:
    """Apply one --set. A path that goes on past a mapping field sets one entry of it and
    keeps the others (train.model_options.filters=[16,32] keeps dense_units); the rest of the
    path, dots included, is the entry's name (spark.conf.spark.executor.memory=4g sets the
    Spark property spark.executor.memory). A path that ends at the field replaces it whole."""
    parts, value = parse_override(text)
    obj, prefix = config, ""
    for index, part in enumerate(parts):
        rest = parts[index + 1:]
        if not rest:
            _set(obj, part, value, prefix)
            return
        known = {f.name for f in dataclasses.fields(obj)}
        current = getattr(obj, part) if part in known else None
        if dataclasses.is_dataclass(current):
            obj, prefix = current, f"{prefix}{part}."
        elif isinstance(current, dict):
            setattr(obj, part, {**current, ".".join(rest): value})
            return
        elif part in known:
            raise ConfigError(f"override '{text}': {prefix}{part} is a single value, not a "
                              f"mapping; use {prefix}{part}=VALUE")
        else:
            _set(obj, part, None, prefix)  # raises: unknown key, naming the valid ones


def validate(config: JobConfig) -> JobConfig:
    for dotted, allowed in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(f"{dotted}: '{value}' is not one of {', '.join(allowed)}")
    positive = {"train.epochs": config.train.epochs,
                "train.batch_size": config.train.batch_size,
                "train.backward_passes_per_step": config.train.backward_passes_per_step,
                "train.steps_per_execution": config.train.steps_per_execution,
                "train.stream_window": config.train.stream_window,
                "train.learning_rate": config.train.learning_rate,
                "data.row_group_size_mb": config.data.row_group_size_mb,
                "data.min_row_groups": config.data.min_row_groups}
    for dotted, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{dotted}: must be > 0, got {value}")
    if not 0.0 <= config.data.validation_fraction < 1.0:
        raise ConfigError("data.validation_fraction: must be in [0, 1), "
                          f"got {config.data.validation_fraction}")
    for dotted, value in {"train.dropout": config.train.dropout,
                          "train.dense_dropout": config.train.dense_dropout,
                          "train.bn_momentum": config.train.bn_momentum}.items():
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"{dotted}: must be in [0, 1), got {value}")
    if config.train.norm_groups is not None and config.train.norm_groups < 1:
        raise ConfigError(f"train.norm_groups: must be >= 1, got {config.train.norm_groups}")
    if not 0.0 <= config.train.final_lr_fraction <= 1.0:
        raise ConfigError("train.final_lr_fraction: must be in [0, 1], "
                          f"got {config.train.final_lr_fraction}")
    for dotted, value in {"data.limit": config.data.limit,
                          "data.seed": config.data.seed, "train.seed": config.train.seed,
                          "train.num_proc": config.train.num_proc,
                          "train.max_num_proc": config.train.max_num_proc,
                          "train.intra_op_threads": config.train.intra_op_threads,
                          "train.cores_per_rank": config.train.cores_per_rank,
                          "train.warmup_epochs": config.train.warmup_epochs}.items():
        if value < 0:
            raise ConfigError(f"{dotted}: must be >= 0, got {value}")
    _validate_data(config.data)
    _validate_train(config.train)
    return config


def resolve_config_path(name: str | Path):
    """A config file path, or the name of a shipped config ('mnist', 'experiments/optimizers'):
    looked up in the installed package (wheels carry conf/ as nnfund_spark/conf, readable even
    when the wheel is imported as a zip from spark-submit --py-files), then in the source
    checkout's conf/ directory. Returns a Path or an importlib.resources Traversable."""
    from importlib.resources import files

    if not isinstance(name, (str, Path)):  # already a Traversable (a sweep's base in a wheel)
        return name
    path = Path(name)
    if path.is_file():
        return path
    roots = [files("nnfund_spark").joinpath("conf"), Path(__file__).resolve().parent.parent / "conf"]
    for root in roots:
        for candidate in (root.joinpath(str(name)), root.joinpath(f"{name}.yaml")):
            if candidate.is_file():
                return candidate
    raise ConfigError(f"config file not found: {name} (neither a file nor the name of a shipped "
                      f"config such as 'mnist' or 'experiments/optimizers')")


def load_config(path: Optional[str | Path] = None, overrides: tuple[str, ...] | list[str] = ()
                ) -> JobConfig:
    """Build a JobConfig from dataclass defaults, then the YAML file, then the overrides."""
    config = JobConfig()
    if path is not None:
        path = resolve_config_path(path)
        try:
            values = load_yaml(path.read_text()) or {}
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        try:
            _apply(config, values)
        except ConfigError as exc:  # an unknown key or a wrong type in the file
            raise ConfigError(f"{path}: {exc}") from exc
    for override in overrides:
        _apply_override(config, override)
    return validate(config)


def to_dict(config: JobConfig) -> dict:
    return dataclasses.asdict(config)


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'epochs': 2}} -> {'train.epochs': 2}: the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
