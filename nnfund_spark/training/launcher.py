"""Driver side of training: check the cluster, open the MLflow run, launch Horovod on Spark,
record the results and the model."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time

from nnfund_spark.config import JobConfig, flatten, to_dict
from nnfund_spark.data.prepare import SPLITS, log_manifest_to_mlflow, read_manifest
from nnfund_spark.data.storage import Location, local_path, resolve
from nnfund_spark.tracking.mlflow_utils import (quiet_model_loading, redact,
                                                resolve_tracking_uri, run_tags,
                                                start_job_run)
from nnfund_spark.training.reaper import MpirunReaper

log = logging.getLogger(__name__)


_HOROVOD_CHECK: threading.Thread | None = None
_HOROVOD_CHECK_LOCK = threading.Lock()


def start_horovod_build_check(controller: str = "auto") -> None:
    """Run Horovod's "was this controller built?" check now, in the background.

    horovod.spark.run performs it before starting the ranks, in a forked process that imports
    TensorFlow: ~5 s on the 2-core reference machine during which the barrier tasks sit idle.
    Started when the job starts, it overlaps the SparkSession start and the MLflow set-up; the
    result is cached per process, so resolving the controller and launching later find it done.
    `controller` is train.controller: the check warms the one the job will use.
    """
    global _HOROVOD_CHECK
    with _HOROVOD_CHECK_LOCK:
        if _HOROVOD_CHECK is None:
            _HOROVOD_CHECK = threading.Thread(target=_horovod_build_check, args=(controller,),
                                              name="horovod-build-check", daemon=True)
            _HOROVOD_CHECK.start()


def _horovod_build_check(controller: str) -> None:
    from horovod.common.util import gloo_built
    try:
        # verbose=False: the cache key horovod.runner.launch.run_controller uses at verbose < 2;
        # mpi_missing() runs (and caches) Horovod's mpi_built check.
        if controller == "gloo" or (controller == "auto" and mpi_missing()):
            gloo_built(verbose=False)
        else:
            mpi_missing()
    except Exception:  # noqa: BLE001 - only a warm-up: horovod.spark.run checks again itself
        log.debug("background Horovod build check failed; Horovod will check again",
                  exc_info=True)


def wait_for_horovod_build_check(timeout: float = 60.0) -> None:
    """Let the background check finish (bounded: if it is stuck, Horovod checks again)."""
    if _HOROVOD_CHECK is not None:
        _HOROVOD_CHECK.join(timeout)
        if _HOROVOD_CHECK.is_alive():
            log.warning("Horovod's build check is still running after %.0f s; launching anyway",
                        timeout)


class ClusterTooSmallError(RuntimeError):
    pass


class WorkerError(RuntimeError):
    """A Horovod rank failed; the message carries the rank's own exception."""


def raise_worker_errors(run_id: str, tracking_uri: str, cause: Exception) -> None:
    """Re-raise Horovod's failure with the error each failed rank recorded on the run."""
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(tracking_uri).get_run(run_id).data.tags
    errors = sorted((k, v) for k, v in tags.items() if k.startswith("error.rank"))
    if not errors:
        raise cause
    detail = "; ".join(f"rank {k[len('error.rank'):]}: {v}" for k, v in errors)
    raise WorkerError(f"training failed on {len(errors)} rank(s): {detail}") from cause


def _clear_earlier_errors(run_id: str, tracking_uri: str) -> None:
    """A resumed run starts without the interrupted attempt's error tags (a run that then
    finishes would still show the old error, and a later failure that records no rank error
    would be reported with the old one); the old job-level error is kept as
    'resumed_after_error'."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    tags = client.get_run(run_id).data.tags
    if "error" in tags:
        client.set_tag(run_id, "resumed_after_error", tags["error"])
    for key in tags:
        if key == "error" or key.startswith("error.rank"):
            client.delete_tag(run_id, key)


def _executor_count(spark, wait_seconds: float) -> int:
    """Registered executors (the driver excluded); in local mode the driver is the executor."""
    context = spark.sparkContext
    if context.master.startswith("local["):
        return 1
    # With a fixed number of executors asked for, wait for all of them (YARN and Kubernetes
    # register them one by one), else for the first.
    expected = max(1, int(context.getConf().get("spark.executor.instances", "1")))
    deadline = time.time() + wait_seconds
    while True:
        count = context._jsc.sc().getExecutorMemoryStatus().size() - 1
        if count >= expected or time.time() >= deadline:
            return max(count, 0)
        time.sleep(1)


def available_slots(spark, wait_seconds: float = 30) -> tuple[int, str]:
    """How many Horovod ranks the cluster can run at once, and what limits it ("GPU"/"core").

    With GPU scheduling on (spark.task.resource.gpu.amount set) a rank needs a GPU slot:
    executors x spark.executor.resource.gpu.amount / spark.task.resource.gpu.amount.
    Otherwise a rank needs a task slot: executor cores / spark.task.cpus (core_slots).
    """
    conf = spark.sparkContext.getConf()
    task_gpus = conf.get("spark.task.resource.gpu.amount")
    if task_gpus:
        per_executor = float(conf.get("spark.executor.resource.gpu.amount", "0"))
        executors = _executor_count(spark, wait_seconds)
        return int(executors * per_executor / float(task_gpus)), "GPU"
    return core_slots(spark.sparkContext.master, dict(conf.getAll()),
                      lambda: _executor_count(spark, wait_seconds),
                      lambda: spark.sparkContext.defaultParallelism), "core"


def core_slots(master: str, conf: dict, executors, default_parallelism) -> int:
    """Concurrent task slots without GPU scheduling: executor cores / spark.task.cpus.

    The cores come from the master URL in local modes (local[N], local-cluster[W,C,M]) and from
    executors x spark.executor.cores on a cluster. Spark's defaultParallelism is only the
    fallback for a cluster without spark.executor.cores (it is the total executor cores unless
    spark.default.parallelism overrides it, and it ignores spark.task.cpus). `executors` and
    `default_parallelism` are called only when needed (the first waits for executors)."""
    task_cpus = max(1, int(conf.get("spark.task.cpus", "1")))
    local = re.fullmatch(r"local\[(\d+|\*)(?:,\s*\d+)?\]", master)
    cluster = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    if master == "local":
        cores = 1
    elif local:
        cores = (os.cpu_count() or 1) if local.group(1) == "*" else int(local.group(1))
    elif cluster:
        cores = int(cluster.group(1)) * int(cluster.group(2))
    elif conf.get("spark.executor.cores"):
        cores = executors() * int(conf["spark.executor.cores"])
    else:
        executors()
        return default_parallelism()
    return cores // task_cpus


def resolve_num_proc(spark, train) -> int:
    """train.num_proc, or with 0 every available slot (capped by train.max_num_proc); fails
    fast when the cluster cannot run that many ranks at once (a barrier stage would wait)."""
    slots, kind = available_slots(spark, wait_seconds=min(30, train.start_timeout))
    wanted = train.num_proc or (min(slots, train.max_num_proc) if train.max_num_proc else slots)
    if wanted < 1 or slots < wanted:
        what = ("GPU slots (executors x spark.executor.resource.gpu.amount / "
                "spark.task.resource.gpu.amount)" if kind == "GPU" else "concurrent Spark task slots")
        if wanted >= 1:
            needs = f"needs {wanted} {what} but the cluster offers {slots}"
            fix = ("add GPU executors or lower train.num_proc" if kind == "GPU" else
                   f"lower train.num_proc or give Spark more cores/executors "
                   f"(e.g. --master local[{wanted}])")
        else:  # num_proc 0 (every slot) on a cluster that has none
            needs = f"takes every one of the {what} but the cluster offers none"
            fix = ("add GPU executors (spark.executor.resource.gpu.amount) to the cluster"
                   if kind == "GPU" else "give Spark executors with cores")
        raise ClusterTooSmallError(
            f"train.num_proc={train.num_proc} {needs} (master {spark.sparkContext.master}); "
            f"{fix}")
    return wanted


def resume_point(train) -> dict | None:
    """The checkpoint to resume from, or None for a fresh run; refuses to mix runs."""
    from nnfund_spark.training import checkpoint

    if not train.checkpoint_dir:
        if train.resume:
            raise ValueError("train.resume=true needs train.checkpoint_dir (where the earlier "
                             "run wrote its checkpoints)")
        return None
    # Where the ranks write (local_path: a plain path, ~, or a file:// URI).
    where = local_path(train.checkpoint_dir)
    meta = checkpoint.latest(where)
    if train.resume:
        if meta is None:
            found = "holds no checkpoint" if where.exists() else "does not exist"
            raise ValueError(f"train.resume=true but {train.checkpoint_dir} {found}; set "
                             f"train.checkpoint_dir to the interrupted run's checkpoint "
                             f"directory, or train.resume=false to start a new run")
        refuse_finished(train, meta)
        return meta
    if meta is not None:
        raise ValueError(f"{train.checkpoint_dir} already holds checkpoints of an earlier run "
                         f"(MLflow run {meta['mlflow_run_id']}, {meta['epoch']} epochs done); set "
                         f"train.resume=true to continue it, or choose an empty directory")
    return None


# Settings a resume may change: how long and where to train, how the ranks run and how much
# they print. Every other train.* setting defines what is trained (model, loss, optimizer, rate
# schedule, regularization, augmentation, seed...). num_proc and batch_size are checked as the
# run's shape (_refuse_other_shape).
RESUMABLE = frozenset({
    "epochs", "resume", "checkpoint_dir", "num_proc", "max_num_proc", "batch_size", "verbose",
    "intra_op_threads", "cpu_binding", "cores_per_rank", "start_timeout", "controller", "input",
    "stream_window", "steps_per_execution", "xla", "log_dead_relu", "early_stopping_patience",
    "early_stopping_metric", "target_accuracy", "target_split"})


def training_recipe(train) -> dict:
    """The train.* settings a checkpoint was trained with that a resume must keep, as JSON
    values (what the checkpoint's meta.json stores)."""
    import json

    values = to_dict(train)
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in RESUMABLE}))


def _refuse_other_recipe(train, meta: dict) -> None:
    """A resume continues the checkpointed run: another model, optimizer, learning rate or
    regularization would train something the run's MLflow params do not describe (and an
    optimizer without the checkpoint's slots fails deep inside TensorFlow)."""
    saved = meta.get("recipe")
    if saved is None:  # a checkpoint written before the recipe was stored
        return
    now = training_recipe(train)
    changed = [f"train.{key}: {saved.get(key)!r} in the checkpointed run, {now.get(key)!r} now"
               for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if changed:
        raise ValueError(f"{train.checkpoint_dir}: resume must train what the checkpointed run "
                         f"trained; changed: {'; '.join(changed)}. Set these back (only "
                         f"{', '.join('train.' + k for k in sorted(RESUMABLE - {'resume'}))} "
                         f"may change), or start a new run in an empty train.checkpoint_dir")


def _refuse_other_shape(train, meta: dict, num_proc: int) -> None:
    """The learning-rate schedule (warm-up, decay) is a table over the whole run's steps,
    indexed by the optimizer's step count, and its peak is scaled by the ranks: a resume with
    another number of ranks or batch size would continue on a different table."""
    shape = meta.get("shape") or {}
    for what, key, now in (("ranks", "world_size", num_proc),
                           ("images per rank per step", "batch_size", train.batch_size)):
        if key in shape and shape[key] != now:
            setting = "train.num_proc" if key == "world_size" else "train.batch_size"
            raise ValueError(f"{train.checkpoint_dir}: the checkpointed run trained with "
                             f"{shape[key]} {what}, this job has {now}; resume with "
                             f"{setting}={shape[key]} (the learning-rate schedule and the "
                             f"optimizer's step count were laid out for it)")


def refuse_finished(train, meta: dict) -> None:
    """A checkpointed run with nothing left to train under this config: all its epochs done, or
    its target or early-stopping rule met (ValueError saying which)."""
    if meta["epoch"] >= train.epochs:
        raise ValueError(f"{train.checkpoint_dir} already holds all {meta['epoch']} epochs "
                         f"(train.epochs={train.epochs}); raise train.epochs to train further")
    _refuse_finished_by_history(train, meta)


def _refuse_finished_by_history(train, meta: dict) -> None:
    """A checkpointed run that already met its target or its early-stopping rule ended there;
    resuming it would train past the point where this config says to stop."""
    from nnfund_spark.training.callbacks import TARGET_METRIC, EarlyStopper

    history = meta.get("history") or {}
    if train.target_accuracy is not None:
        key = TARGET_METRIC[train.target_split]
        reached = [i + 1 for i, v in enumerate(history.get(key, [])) if v >= train.target_accuracy]
        if reached:
            raise ValueError(f"{train.checkpoint_dir}: the run reached train.target_accuracy="
                             f"{train.target_accuracy} ({key}) at epoch {reached[0]}; nothing to "
                             f"resume (raise the target or unset it to train further)")
    stopper = EarlyStopper(train.early_stopping_metric, train.early_stopping_patience)
    if stopper.should_stop(history):
        raise ValueError(f"{train.checkpoint_dir}: early stopping already ended the run "
                         f"({train.early_stopping_metric} has not improved for "
                         f"{train.early_stopping_patience} epochs); nothing to resume")


def model_kwargs(train, manifest: dict) -> dict:
    """Keyword arguments of build_model for this config; None means the model's default."""
    kwargs = dict(train.model_options)
    kwargs.update(activation=train.activation, activation_params=dict(train.activation_params),
                  dropout=train.dropout, dense_dropout=train.dense_dropout,
                  l1=train.l1 or None, l2=train.l2 or None, normalization=train.normalization,
                  norm_groups=train.norm_groups, bn_momentum=train.bn_momentum,
                  initializer=train.initializer, normalization_input=train.input_normalization)
    if train.input_normalization == "standardize":
        kwargs.update(mean=manifest["train_channel_mean"], std=manifest["train_channel_std"])
    return kwargs


def check_splits_for(train, manifest: dict, dataset: str) -> None:
    """Refuse, on the driver and before any rank starts, a config that needs a split the
    prepared dataset has empty: early stopping would silently never stop without validation
    metrics, and the target would be checked against nothing."""
    def empty(split):
        return not manifest["splits"].get(split, {}).get("count", 0)

    if empty("train"):
        raise ValueError(f"{dataset}: the train split is empty; nothing to train on")
    if train.target_accuracy is not None and empty(train.target_split):
        raise ValueError(f"train.target_accuracy={train.target_accuracy} is checked on the "
                         f"{train.target_split} split, which is empty in {dataset}; set "
                         f"train.target_split to a non-empty split or re-prepare with it")
    if train.early_stopping_patience and empty("validation"):
        raise ValueError(f"train.early_stopping_patience={train.early_stopping_patience} "
                         f"watches {train.early_stopping_metric}, but the validation split of "
                         f"{dataset} is empty; re-prepare with data.validation_fraction > 0 or "
                         f"set train.early_stopping_patience=0")


def check_model_for(train, manifest: dict, dataset: str) -> None:
    """Refuse, on the driver and before any rank starts, a model that cannot be built for this
    dataset (a train.model_options value the builder refuses, a geometry that does not fit the
    images) or an augmentation that does not fit its images (random_crop padding): the same
    checks the ranks make, without TensorFlow."""
    from nnfund_spark.models.zoo import check_model
    from nnfund_spark.training.augment import validated_strengths

    shape = tuple(manifest["image_shape"])
    try:
        validated_strengths(train.augment, shape)
    except ValueError as exc:
        raise ValueError(f"train.augment: {exc} ({dataset})") from exc
    try:
        check_model(train.model, shape, manifest["num_classes"], **model_kwargs(train, manifest))
    except ValueError as exc:
        raise ValueError(f"train.model={train.model} cannot be built for {dataset} "
                         f"({'x'.join(map(str, shape))} images, {manifest['num_classes']} "
                         f"classes): {exc}") from exc


def preflight(config: JobConfig) -> tuple:
    """The checks that need the prepared dataset's manifest, before Spark runs anything:
    (dataset location, manifest)."""
    dataset_dir = resolve(config.data.output_dir)
    manifest = read_manifest(dataset_dir)
    check_splits_for(config.train, manifest, dataset_dir.display)
    check_model_for(config.train, manifest, dataset_dir.display)
    return dataset_dir, manifest


def worker_settings(config: JobConfig, manifest: dict, dataset_dir: Location) -> dict:
    """Plain values only: this dict is pickled to every executor."""
    train = config.train
    return {
        "model_kwargs": model_kwargs(train, manifest),
        "optimizer_options": dict(train.optimizer_options),
        "loss": train.loss, "one_hot": train.one_hot, "label_smoothing": train.label_smoothing,
        "schedule": train.schedule, "schedule_options": dict(train.schedule_options),
        "augment": dict(train.augment),
        "early_stopping_patience": train.early_stopping_patience,
        "early_stopping_metric": train.early_stopping_metric,
        "log_dead_relu": train.log_dead_relu,
        # Empty splits (e.g. validation_fraction=0) are left out: Petastorm cannot open them.
        "split_urls": {split: dataset_dir.child(split).uri for split in SPLITS
                       if manifest["splits"].get(split, {}).get("count", 0) > 0},
        "manifest": {"image_shape": manifest["image_shape"],
                     "num_classes": manifest["num_classes"]},
        "model": train.model, "optimizer": train.optimizer,
        "learning_rate": train.learning_rate, "scale_lr_by_workers": train.scale_lr_by_workers,
        "warmup_epochs": train.warmup_epochs, "final_lr_fraction": train.final_lr_fraction,
        "batch_size": train.batch_size, "epochs": train.epochs,
        "dropout": train.dropout, "dense_dropout": train.dense_dropout,
        "seed": train.seed, "intra_op_threads": train.intra_op_threads,
        "verbose": train.verbose, "mixed_precision": train.mixed_precision, "xla": train.xla,
        "fp16_allreduce": train.fp16_allreduce, "cpu_binding": train.cpu_binding,
        "cores_per_rank": train.cores_per_rank,
        "backward_passes_per_step": train.backward_passes_per_step,
        "steps_per_execution": train.steps_per_execution,
        "input": train.input, "stream_window": train.stream_window,
        "target_accuracy": train.target_accuracy, "target_split": train.target_split,
        "recipe": training_recipe(train),
    }


def rebuild_model(weights, config: JobConfig, manifest: dict):
    """The trained Keras model on the driver: the same architecture with rank 0's weights."""
    from nnfund_spark.models import build_model

    model = build_model(config.train.model, manifest["image_shape"], manifest["num_classes"],
                        **model_kwargs(config.train, manifest))
    model.set_weights(weights)
    return model


def log_keras_model(model, manifest: dict):
    """Log as 'model' with the MLflow TensorFlow flavor, signature and input example."""
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.models import infer_signature

    example = np.zeros((2, *manifest["image_shape"]), np.float32)
    signature = infer_signature(example, model.predict(example, verbose=0))
    # MLflow 3 names logged models with `name`; 2.x (Databricks Runtime 14.3 ML ships 2.9)
    # takes `artifact_path`.
    location = {"name": "model"} if int(mlflow.__version__.split(".")[0]) >= 3 else \
        {"artifact_path": "model"}
    # MLflow checks the input example by loading the logged model and predicting with Keras'
    # default verbosity: without this, a progress bar lands on the job's stdout.
    interactive = tf.keras.utils.is_interactive_logging_enabled()
    tf.keras.utils.disable_interactive_logging()
    try:
        with quiet_model_loading():  # MLflow loads the model back to check the example
            return mlflow.tensorflow.log_model(model, signature=signature, input_example=example,
                                               **location)
    finally:
        if interactive:
            tf.keras.utils.enable_interactive_logging()


def sample_images(split_url: str, count: int = 4):
    """The first `count` images of a split (one row group read), for the activation-map view."""
    from nnfund_spark.training.pipeline import read_row_groups, shard_row_groups

    return read_row_groups(split_url, lambda counts: shard_row_groups(counts, 0, 1)[:1])[1][:count]


def run_training(spark, config: JobConfig, extra_settings: dict | None = None,
                 run_name: str | None = None) -> dict:
    """Train config.train.model on the prepared dataset at config.data.output_dir.

    Opens exactly one MLflow run (nested under the active run when called from a sweep).
    Returns a summary: run id, model URI, test metrics, history, per-rank results (no weights).
    """
    import horovod.spark
    import mlflow

    from nnfund_spark.tracking.run_logging import log_training_artifacts

    job_started = time.time()
    start_horovod_build_check(config.train.controller)
    dataset_dir, manifest = preflight(config)
    num_proc = resolve_num_proc(spark, config.train)
    resume = resume_point(config.train)
    if resume:
        _refuse_other_shape(config.train, resume, num_proc)
        _refuse_other_recipe(config.train, resume)
    controller = resolve_controller(config.train.controller, spark, num_proc)
    tracking_uri = resolve_tracking_uri(config.tracking)

    with start_job_run(config.tracking, tracking_uri, run_name,
                       run_id=resume["mlflow_run_id"] if resume else None) as run:
        if resume:
            # Params were logged by the interrupted run (they are immutable in MLflow).
            mlflow.set_tag("resumed_from_epoch", resume["epoch"])
            _clear_earlier_errors(run.info.run_id, tracking_uri)
        else:
            params = redact(flatten(to_dict(config)))
            params.update({"world_size": num_proc,
                           "dataset.name": manifest["source"]["name"],
                           "dataset.checksum": manifest["source"]["checksum_sha256"],
                           "dataset.train_count": manifest["splits"]["train"]["count"]})
            mlflow.log_params({k: ("" if v is None else v) for k, v in params.items()})
            mlflow.set_tags(run_tags(spark))
            log_manifest_to_mlflow(manifest, dataset_dir.uri)
        # A tag, not a param: a resumed run may land on a host that resolves "auto" otherwise.
        mlflow.set_tag("controller", controller)

        settings = worker_settings(config, manifest, dataset_dir)
        settings.update({"tracking_uri": tracking_uri, "mlflow_run_id": run.info.run_id,
                         "resume_from": resume, "job_started": job_started})
        if config.train.checkpoint_dir:
            settings["checkpoint_dir"] = str(local_path(config.train.checkpoint_dir))
        settings.update(extra_settings or {})
        from nnfund_spark.training.worker import train_worker

        wait_for_horovod_build_check()
        started = time.time()
        # Horovod: one barrier task per rank; Gloo rendezvous through the driver, or mpirun.
        mpi = controller == "mpi"
        try:
            # Under MPI, what mpirun leaves running on the driver is killed 30 s after it
            # ends, so a failed job is reported rather than waited on (reaper.py).
            with MpirunReaper() if mpi else contextlib.nullcontext():
                results = horovod.spark.run(train_worker, args=(settings,),
                                            num_proc=num_proc,
                                            start_timeout=config.train.start_timeout,
                                            use_gloo=not mpi, use_mpi=mpi, verbose=1,
                                            env=_worker_env(mpi))
        except Exception as exc:
            raise_worker_errors(run.info.run_id, tracking_uri, exc)
        wall = time.time() - started
        rank0 = next(r for r in results if r["rank"] == 0)
        epochs_trained = len(rank0["history"].get("loss", []))
        # This job's own wall time, at the step of the last epoch trained: a resumed run gets
        # one point per job (the interrupted one, if it got this far, and the resumed one).
        mlflow.log_metric("train_wall_seconds", wall, step=epochs_trained)
        if rank0["test_count"]:
            # At the step of the last epoch trained, so the UI's charts put the test point at
            # the end of the per-epoch curves.
            mlflow.log_metrics({"test_loss": rank0["test_loss"],
                                "test_accuracy": rank0["test_accuracy"]}, step=epochs_trained)
        if rank0["target_epoch"] is not None and rank0["time_to_target_seconds"] is not None:
            # Seconds from the start of run_training to the end of the epoch (and its
            # evaluation) that reached train.target_accuracy.
            mlflow.log_metrics({"target_epoch": rank0["target_epoch"],
                                "time_to_target_seconds": rank0["time_to_target_seconds"]})
        mlflow.set_tags({"device": rank0["device"],
                         "weights_identical_across_ranks":
                             str(len({r["weights_sha256"] for r in results}) == 1)})
        per_rank = [{k: v for k, v in r.items()
                     if k not in ("weights", "history", "train_indices", "seen_per_epoch",
                                  "test_confusion")} for r in results]
        mlflow.log_dict(sorted(per_rank, key=lambda r: r["rank"]), "ranks.json")
        model = rebuild_model(rank0["weights"], config, manifest)
        # A resumed run has it unless the interrupted job died before this line.
        if not resume or "model.parameters" not in mlflow.MlflowClient(tracking_uri).get_run(
                run.info.run_id).data.params:
            mlflow.log_param("model.parameters", model.count_params())
        model_uri = None
        if config.tracking.log_model:
            model_uri = log_keras_model(model, manifest).model_uri
        if config.tracking.log_artifacts:
            # Only the confusion matrix needs a test split; the activation maps' images come
            # from the first split with rows (split_urls holds only those; train always does).
            images_from = next(split for split in ("test", "validation", "train")
                               if split in settings["split_urls"])
            log_training_artifacts(model, rank0["history"],
                                   rank0["test_confusion"] if rank0["test_count"] else None,
                                   manifest["class_names"],
                                   sample_images(settings["split_urls"][images_from]),
                                   config.train.activation, config.train.activation_params)

    for result in results:
        result.pop("weights", None)
    return {"run_id": run.info.run_id, "tracking_uri": tracking_uri, "model_uri": model_uri,
            "controller": controller,
            "test_accuracy": rank0["test_accuracy"], "test_loss": rank0["test_loss"],
            "job_started": job_started, "target_epoch": rank0["target_epoch"],
            "time_to_target_seconds": rank0["time_to_target_seconds"],
            "test_count": rank0["test_count"], "history": rank0["history"],
            "parameters": model.count_params(), "wall_seconds": wall, "ranks": results}


# Milliseconds Horovod's woken background thread waits for the rest of a step's gradients
# (HOROVOD_IDLE_WAIT_HOLD; the patch's own default is one HOROVOD_CYCLE_TIME, 1 ms).
IDLE_WAIT_HOLD_MS = "0.25"


def _worker_env(mpi: bool = False) -> dict:
    """Environment for mpirun and the rank processes: the driver's, quieter TensorFlow logs,
    Horovod's idle wait (``HOROVOD_IDLE_WAIT=1``: with the Horovod that ``make setup`` builds,
    scripts/horovod-0.28.1-idle-wait.patch, the background thread sleeps while no tensor is
    queued instead of waking every millisecond on the core a rank computes on, and
    ``HOROVOD_IDLE_WAIT_HOLD=0.25``: woken by a step's first gradient, it waits 0.25 ms rather
    than a whole 1 ms cycle for the others before it negotiates, which ran the 2-rank MNIST
    job 3.5 % faster on average in seven rounds by hand, though not in the one full benchmark
    run (README, "Horovod's idle wait"); a stock Horovod ignores both; a user's own values are
    kept), and with MPI:

    - Open MPI's yield-when-idle (a rank waiting in MPI gives its core back instead of spinning
      on it, which on a core shared with the rank's own compute thread costs that thread);
    - hwloc without its GL component. Open MPI reads the machine's topology with hwloc, whose
      GL plugin (Debian's libhwloc-plugins) probes X displays :0 to :9; with no X socket that
      means TCP ports 6000-6009 on localhost, and when any other service listens there (for
      one, a Horovod task service: they bind random ports from 1024 up) mpirun waits forever
      for an X server's answer, ignoring SIGTERM. Seen in our test suite; the GPU topology the
      plugin looks for is not used by Open MPI."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("HOROVOD_IDLE_WAIT", "1")
    env.setdefault("HOROVOD_IDLE_WAIT_HOLD", IDLE_WAIT_HOLD_MS)
    if mpi:
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        chosen = [c for c in env.get("HWLOC_COMPONENTS", "").split(",") if c]
        if "-gl" not in chosen and "^gl" not in chosen:
            env["HWLOC_COMPONENTS"] = ",".join(chosen + ["-gl"])  # a user's own list kept
    return env


def resolve_controller(choice: str, spark=None, num_proc: int = 1) -> str:
    """The controller the ranks will use: "gloo" or "mpi".

    "auto" is mpi when this driver's Horovod was built with MPI and Open MPI's mpirun is on the
    PATH (horovod.spark supports no other MPI), and (given the session, on a cluster) the
    executors that answer a probe of ``num_proc`` tasks have the daemon that mpirun starts
    ranks through (``mpi_daemon``), else gloo. An
    explicit "mpi" that cannot run is refused before any rank starts, naming what is missing
    and where."""
    if choice == "gloo":
        return "gloo"
    wait_for_horovod_build_check()  # it may be running mpi_built right now
    missing = mpi_missing()
    daemon = mpi_daemon() if not missing else None
    if daemon == "hydra_pmi_proxy":
        # horovod.spark drives mpirun with Open MPI's options (-mca plm_rsh_agent) and reads
        # each rank's number from Open MPI's environment (OMPI_COMM_WORLD_RANK).
        missing = ["Open MPI's mpirun (horovod.spark runs ranks through Open MPI only; the "
                   "mpirun on this PATH is MPICH or Intel MPI)"]
        if choice == "auto":
            log.warning("train.controller=auto: using Gloo; MPI needs %s", missing[0])
    elif daemon and spark is not None:
        hosts = executors_without(spark, daemon, num_proc)
        if hosts:
            missing = [f"MPI on every executor: no {daemon} on the executors' PATH on "
                       f"{', '.join(hosts)} (mpirun starts the ranks through it; install the "
                       f"driver's MPI there, e.g. openmpi-bin)"]
            if choice == "auto":  # the driver has MPI: a cluster set up half-way, say so
                log.warning("train.controller=auto: using Gloo; MPI needs %s", missing[0])
    if choice == "auto":
        return "gloo" if missing else "mpi"
    if missing:
        raise ValueError("train.controller=mpi needs " + " and ".join(missing)
                         + "; or use train.controller=gloo (or auto)")
    return "mpi"


def mpi_daemon() -> str | None:
    """The program the driver's mpirun starts on each node to launch ranks there: Open MPI
    4's ``orted``, Open MPI 5's ``prted``, MPICH's (and Intel MPI's) ``hydra_pmi_proxy``;
    None when ``mpirun --version`` names none of them (the executors are then not asked)."""
    import subprocess

    try:
        text = subprocess.run(["mpirun", "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("mpirun --version failed (%s); the executors are not checked for MPI", exc)
        return None
    found = re.search(r"\(Open MPI\) (\d+)", text)
    if found:
        return "orted" if int(found.group(1)) < 5 else "prted"
    return "hydra_pmi_proxy" if re.search(r"HYDRA|MPICH|Intel", text) else None


def _found_here(program: str):
    def probe(_partition):
        import shutil
        import socket

        yield socket.gethostname(), shutil.which(program) is not None
    return probe


def executors_without(spark, program: str, tasks: int) -> list:
    """Hosts whose executors do not have ``program`` on their PATH, from one quick Spark job
    of ``tasks`` tasks (a sample: the barrier job's tasks may land elsewhere, but executors
    from one image answer alike). In plain local mode the executor is the driver: nothing to
    ask."""
    master = spark.sparkContext.master
    if master == "local" or master.startswith("local["):
        return []
    tasks = max(1, int(tasks))
    answers = spark.sparkContext.parallelize(range(tasks), tasks) \
        .mapPartitions(_found_here(program)).collect()
    return sorted({host for host, found in answers if not found})


def mpi_missing() -> list:
    """What this host lacks to launch ranks with mpirun (empty when it can)."""
    import shutil

    from horovod.common.util import mpi_built

    missing = []
    if not mpi_built(verbose=False):
        missing.append("Horovod built with MPI (reinstall it with HOROVOD_WITH_MPI=1 after "
                       "installing Open MPI; this one has no MPI)")
    if not shutil.which("mpirun"):
        missing.append("mpirun on the driver's PATH (Open MPI, e.g. apt-get install "
                       "openmpi-bin libopenmpi-dev)")
    return missing
