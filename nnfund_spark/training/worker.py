"""The function every Horovod rank runs on its Spark executor.

It receives only plain values (a dict of str/int/float/lists), imports TensorFlow and Horovod
inside, and returns plain values: Spark pickles it to the executors, where no driver state exists.
"""
from __future__ import annotations

import hashlib
import os
import sys
import time


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(weight.tobytes())
    return digest.hexdigest()


def describe_built(model, optimizer) -> dict:
    """What a rank really trains with, read from the objects TensorFlow built: the optimizer's
    class and momentum settings, the loss, and the model's layer classes, activation functions
    and kernel initializers (reported in ranks.json; the tests hold it against the config)."""
    activations, initializers = set(), set()
    for layer in model.layers:
        function = getattr(layer, "activation", None)
        if function is not None:
            activations.add(getattr(function, "__name__", type(function).__name__))
        if getattr(layer, "kernel_initializer", None) is not None:
            initializers.add(type(layer.kernel_initializer).__name__)
    config = optimizer.get_config()
    loss = model.loss
    return {"optimizer": type(optimizer).__name__,
            "momentum": float(config.get("momentum") or 0.0),
            "nesterov": bool(config.get("nesterov", False)),
            "loss": getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__),
            "layer_classes": sorted({type(layer).__name__ for layer in model.layers}),
            "activations": sorted(activations), "kernel_initializers": sorted(initializers)}


def select_gpu(local_rank: int, assigned: list[str]) -> tuple[int, str]:
    """Which GPU index a rank pins: the first address Spark's GPU scheduling assigned to its
    barrier task, else its local rank (clusters without resource scheduling)."""
    if assigned:
        return int(assigned[0]), "spark"
    return local_rank, "local_rank"


def configure_devices(tf, local_rank: int, settings: dict) -> dict:
    """Pin exactly one GPU per rank (memory growth on), optional mixed precision; CPU otherwise."""
    from horovod.spark.task import get_available_devices

    assigned = [str(a) for a in get_available_devices()]
    index, source = select_gpu(local_rank, assigned)
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if index >= len(gpus):
            raise ValueError(f"rank with local rank {local_rank} was assigned GPU {index} "
                             f"({source}) but only {len(gpus)} GPUs are visible")
        tf.config.set_visible_devices(gpus[index], "GPU")
        tf.config.experimental.set_memory_growth(gpus[index], True)
    if settings.get("mixed_precision"):
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    if assigned and not gpus:
        # Spark gave this rank a GPU, but TensorFlow sees none (a CPU-only TensorFlow build,
        # missing CUDA libraries): the rank trains on CPU. Said loudly, and the rank's
        # "device" in ranks.json and the run's tags say CPU.
        print(f"nnfund_spark: WARNING: Spark assigned GPU {', '.join(assigned)} to local rank "
              f"{local_rank}, but TensorFlow sees no GPU; this rank trains on CPU "
              f"(check the TensorFlow build and CUDA libraries on the executor)",
              file=sys.stderr, flush=True)
    return {"device": "GPU" if gpus else "CPU", "visible_gpus": len(gpus),
            "assigned_gpus": assigned, "gpu_index": index if (gpus or assigned) else None,
            "gpu_source": source}


def bind_cpus(local_rank: int, local_size: int, cores: list[int], per_rank: int = 0) -> list[int]:
    """This rank's share of ``cores`` (the CPUs the process may use): local rank k gets the
    k-th contiguous slice of ``per_rank`` cores (0: of len(cores) // local_size cores); with
    more ranks than cores and no per_rank, ranks share cores round-robin rather than failing."""
    cores = sorted(cores)
    if local_size < 1 or not 0 <= local_rank < local_size:
        raise ValueError(f"local rank {local_rank} is not within local size {local_size}")
    if per_rank:
        if per_rank * local_size > len(cores):
            raise ValueError(f"train.cores_per_rank={per_rank} for {local_size} rank(s) on this "
                             f"host needs {per_rank * local_size} cores but the process may use "
                             f"{len(cores)} ({cores}); lower train.cores_per_rank or use 0")
        return cores[local_rank * per_rank:(local_rank + 1) * per_rank]
    share = len(cores) // local_size
    if share == 0:
        return [cores[local_rank % len(cores)]]
    return cores[local_rank * share:(local_rank + 1) * share]


def apply_cpu_binding(per_rank: int = 0) -> list[int]:
    """Bind every thread of this process to its rank's cores (before TensorFlow starts its
    thread pools, so they inherit it). The launcher exports the local rank and size."""
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("train.cpu_binding needs Linux (os.sched_setaffinity); set "
                           "train.cpu_binding=false on this platform")
    from nnfund_spark.training.collectives import launcher_value

    local_rank, local_size = launcher_value("local_rank", 0), launcher_value("local_size", 1)
    mine = bind_cpus(local_rank, local_size, list(os.sched_getaffinity(0)), per_rank)
    for thread in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread), mine)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
    return mine


def distribute_optimizer(optimizer, size: int, backward_passes_per_step: int = 1,
                         fp16_allreduce: bool = False):
    """Horovod's DistributedOptimizer around ``optimizer``: gradients are averaged across ranks
    before each update (optionally sent as fp16), after summing ``backward_passes_per_step``
    local batches when that is above 1 (so one allreduce and one update per k batches).

    A single rank without accumulation keeps the plain optimizer: there is nothing to average,
    and Horovod's allreduce at size 1 still passes every step's gradients through its
    background thread (about 2 ms a step for the MNIST convnet on one CPU core)."""
    from nnfund_spark.training.collectives import needs_horovod

    if not needs_horovod(size, backward_passes_per_step):
        return optimizer
    import horovod.tensorflow.keras as hvd

    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    return hvd.DistributedOptimizer(optimizer, compression=compression,
                                    backward_passes_per_step=backward_passes_per_step,
                                    average_aggregated_gradients=True)


def derived_seed(seed: int, rank: int, first_epoch: int = 0) -> int:
    """The seed of a rank's random draws (dropout, augmentation) in a job starting at
    `first_epoch`. Rank 0 of a fresh job takes `seed` itself, so its initial weights are the
    ones plain Keras draws with that seed; every other (rank, first epoch) gets a seed mixed
    from all three, so ranks draw unrelated streams (the augmentation layers' seeds, base + 1..5,
    do not coincide across ranks as seed + rank would make them) and a resumed job does not
    replay the draws of the job's first epochs."""
    import numpy as np

    if rank == 0 and first_epoch == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed), int(rank), int(first_epoch)]).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def train_worker(settings: dict) -> dict:
    """Entry point of every rank. A rank's exception is recorded on the job's MLflow run
    (tag error.rank<N>) before it propagates, so the driver can report the worker's own error
    rather than Horovod's generic "a process exited with non-zero status"."""
    try:
        return _train(settings)
    except BaseException as exc:
        if settings.get("mlflow_run_id"):
            from mlflow.tracking import MlflowClient

            from nnfund_spark.tracking.mlflow_utils import error_text
            from nnfund_spark.training.collectives import launcher_value
            rank = launcher_value("rank", -1)
            rank = rank if rank >= 0 else "unknown"
            try:
                MlflowClient(settings["tracking_uri"]).set_tag(
                    settings["mlflow_run_id"], f"error.rank{rank}", error_text(exc, 4000))
            except Exception as tagging:  # e.g. the tracking server is unreachable from here
                # The rank's own error goes on, not this one; say why the tag is missing.
                print(f"rank {rank}: could not record its error on the MLflow run "
                      f"({error_text(tagging, 500)})", file=sys.stderr, flush=True)
        raise


def _train(settings: dict) -> dict:
    import atexit
    import shutil
    import tempfile

    # Spark's GPU addresses come from discovery scripts such as nvidia-smi's, which number GPUs
    # by PCI bus; CUDA's default order is fastest first. On a host with mixed GPU models the
    # two differ and two ranks could pin one GPU: make CUDA (so TensorFlow) count as Spark does.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    import numpy as np
    import tensorflow as tf

    from nnfund_spark.models import build_model
    from nnfund_spark.training import checkpoint, collectives
    from nnfund_spark.training.augment import make_augmenter
    from nnfund_spark.training.callbacks import (AverageModelState, DeadReluMonitor,
                                                  EarlyStopper, EpochClock,
                                                  EpochLogger, FaultInjection, LearningRateLogger,
                                                  MlflowEpochLogger, ShardedEvaluation,
                                                  StepTableRate, TARGET_METRIC,
                                                  averaged_state, sharded_evaluate)
    from nnfund_spark.training.metrics import relu_layers
    from nnfund_spark.training.optimizers import make_loss, make_optimizer
    from nnfund_spark.training.schedules import scaled_base_lr, schedule_function
    from nnfund_spark.training.pipeline import (ExampleRecorder, StreamedShard, epoch_dataset,
                                                read_shard, stream_dataset, steps_per_epoch)

    cores = (apply_cpu_binding(settings.get("cores_per_rank", 0))
             if settings.get("cpu_binding") else None)
    world = collectives.start(settings.get("backward_passes_per_step", 1))
    rank, size = world.rank, world.size
    devices = configure_devices(tf, world.local_rank, settings)
    devices["cpu_cores"] = cores
    threads = settings["intra_op_threads"] or (
        len(cores) if cores else max(1, (os.cpu_count() or 1) // world.local_size))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    # inter-op = intra-op: a rank then uses exactly `threads` cores and ranks do not contend.
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    # Weights are broadcast from rank 0, so per-rank seeds only change dropout and augmentation
    # (the shuffling has its own seeds, per epoch and rank).
    resume_from = settings.get("resume_from") or {}
    first_epoch = resume_from.get("epoch", 0)
    rank_seed = derived_seed(settings["seed"], rank, first_epoch)
    tf.keras.utils.set_random_seed(rank_seed)

    started = time.time()
    stream = settings.get("input") == "stream"
    # Test hook: shrink this rank's shard to simulate row groups of very different sizes.
    keep = settings.get("shard_limits", {}).get(str(rank))
    empty = (np.zeros((0,), np.int64), None, np.zeros((0,), np.int32))
    shards = {split: read_shard(settings["split_urls"][split], rank, size)
              if split in settings["split_urls"] and not (stream and split == "train")
              else empty
              for split in ("train", "validation", "test")}
    streamed = StreamedShard(settings["split_urls"]["train"], rank, size,
                             settings["stream_window"], keep) if stream else None
    read_seconds = time.time() - started
    train_index, train_images, train_labels = shards["train"]
    if keep is not None and not stream:  # a streamed shard applied it above
        train_index, train_images, train_labels = (train_index[:keep], train_images[:keep],
                                                   train_labels[:keep])
    train_count = streamed.count if stream else len(train_index)
    shard_sizes = world.allgather_object(train_count)
    steps = steps_per_epoch(shard_sizes, settings["batch_size"])

    manifest = settings["manifest"]
    num_classes = manifest["num_classes"]
    model = build_model(settings["model"], manifest["image_shape"], num_classes,
                        **settings["model_kwargs"])
    peak_lr = scaled_base_lr(settings["learning_rate"], size, settings["scale_lr_by_workers"])
    # The whole run's rate per step, evaluated in the train step from the optimizer's counter.
    rate = StepTableRate.from_function(schedule_function(
        settings["schedule"], peak_lr, steps, settings["epochs"], settings["warmup_epochs"],
        **_schedule_params(settings)), steps * settings["epochs"])
    local_optimizer = make_optimizer(settings["optimizer"], rate,
                                     **settings["optimizer_options"])
    optimizer = distribute_optimizer(local_optimizer, size,
                                     settings.get("backward_passes_per_step", 1),
                                     settings.get("fp16_allreduce", False))
    model.compile(optimizer=optimizer,
                  loss=make_loss(settings["loss"], num_classes, settings["one_hot"],
                                 settings["label_smoothing"]),
                  metrics=[tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=bool(settings.get("xla")),
                  steps_per_execution=settings.get("steps_per_execution", 1))
    augmenter = make_augmenter(settings["augment"], manifest["image_shape"],
                               rank_seed) if settings["augment"] else None

    history: dict = {}
    run_shape = {"world_size": size, "batch_size": settings["batch_size"],
                 "steps_per_epoch": int(steps)}
    saved_steps = resume_from.get("shape", {}).get("steps_per_epoch")
    if saved_steps is not None and saved_steps != steps:
        # The schedule is indexed by the optimizer's step count: resuming with other steps per
        # epoch would put every later epoch at the wrong rate (the driver already checked the world
        # size and batch; this catches a re-prepared dataset of another size).
        raise ValueError(f"resume: the checkpoint's run had {saved_steps} steps per epoch, this "
                         f"job has {steps} (the training split changed size); resume needs the "
                         f"same dataset, train.num_proc and train.batch_size")
    if resume_from:
        # Every rank reads the same checkpoint, so all start from identical weights and slots.
        checkpoint.restore(resume_from["path"], model)
        history = {k: list(v) for k, v in resume_from["history"].items()}
    # elapsed_seconds (and time to target) count the run's training time across resumes: a
    # resumed job continues the clock from the checkpoint's last epoch, so the time between
    # the interruption and the rerun (and the lost part of the interrupted epoch) is not in it.
    clock_started = settings.get("job_started")
    if clock_started is not None and history.get("elapsed_seconds"):
        clock_started -= history["elapsed_seconds"][-1]

    if size > 1:
        # Horovod: every rank starts from rank 0's weights. Done once here rather than with
        # hvd.callbacks.BroadcastGlobalVariablesCallback, whose per-batch hook Keras would call
        # in Python after every call of the train function. Optimizer slots start equal (zeros,
        # or the same checkpoint on resume).
        world.broadcast_variables(model.variables)
    # No callback below has a per-batch hook, and Keras runs train.steps_per_execution steps
    # per call of the compiled train function: Python runs once per that many steps.
    # The clock stops after the metric averaging and before any evaluation below.
    callbacks = [LearningRateLogger(rate), *world.metric_average_callbacks()]
    if size > 1 and averaged_state(model):
        callbacks.append(AverageModelState(world))
    callbacks.append(EpochClock(sum(shard_sizes)))
    if "validation" in settings["split_urls"]:
        callbacks.append(ShardedEvaluation(shards["validation"][1:], num_classes, world,
                                           batch_size=512, prefix="val_"))
    target = settings.get("target_accuracy")
    target_split = settings.get("target_split", "validation")
    target_key = TARGET_METRIC[target_split]
    if target is not None and target_split not in settings["split_urls"]:
        raise ValueError(f"train.target_accuracy with train.target_split={target_split} needs a "
                         f"non-empty {target_split} split in the prepared dataset")
    test_evaluation = None
    if target is not None and target_split == "test":
        # Time-to-accuracy protocol: the test split is evaluated after every epoch.
        test_evaluation = ShardedEvaluation(shards["test"][1:], num_classes, world,
                                            batch_size=512, prefix="test_")
        callbacks.append(test_evaluation)
    if settings.get("fault_injection"):
        callbacks.append(FaultInjection(rank, **settings["fault_injection"]))
    tensorboard_dir = None
    if rank == 0:
        if settings["log_dead_relu"] and relu_layers(model) and shards["validation"][1] is not None:
            callbacks.append(DeadReluMonitor(shards["validation"][1][:256]))
        callbacks.append(EpochLogger(sum(shard_sizes), settings["verbose"], clock_started))
        if settings.get("mlflow_run_id"):
            # Named after the run: whose files these are, should one be left behind.
            tensorboard_dir = tempfile.mkdtemp(
                prefix=f"nnfund-tensorboard-{settings['mlflow_run_id']}-")
            # Removed once uploaded; this covers a rank that fails before that.
            atexit.register(shutil.rmtree, tensorboard_dir, True)
            callbacks.append(tf.keras.callbacks.TensorBoard(tensorboard_dir, profile_batch=0))
            callbacks.append(MlflowEpochLogger(settings["tracking_uri"], settings["mlflow_run_id"]))

    seen = []
    # Tests: the examples the training stream really yielded, per epoch.
    recording = bool(settings.get("return_shard_indices"))
    recorder = ExampleRecorder(train_images) if recording and not stream else None
    target_epoch = time_to_target = None
    epoch = first_epoch - 1
    stopper = EarlyStopper(settings["early_stopping_metric"], settings["early_stopping_patience"])
    for epoch in range(first_epoch, settings["epochs"]):
        handed = [] if recording and stream else None  # the streamed batches' indices
        if stream:
            dataset = stream_dataset(streamed, manifest["image_shape"], steps, settings["seed"],
                                     epoch, rank, handed)
        else:
            dataset = epoch_dataset(train_images, train_labels, steps, settings["seed"], epoch,
                                    rank)
        if recorder is not None:
            dataset = recorder.wrap(dataset)
        if augmenter is not None:
            # Training split only; validation and test see the images as stored.
            dataset = dataset.map(augmenter, num_parallel_calls=tf.data.AUTOTUNE)
        # One fit call per epoch: each epoch gets its own freshly shuffled, exactly-once batches.
        fitted = model.fit(dataset, initial_epoch=epoch, epochs=epoch + 1, verbose=0,
                           callbacks=callbacks)
        if recorder is not None:
            seen.append([int(train_index[p]) if p >= 0 else -1
                         for p in recorder.take_positions()])
        elif handed is not None:
            seen.append([int(i) for batch in handed for i in batch])
        for key, values in fitted.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        if rank == 0 and settings.get("checkpoint_dir"):
            checkpoint.save(settings["checkpoint_dir"], epoch + 1, model, history,
                            settings.get("mlflow_run_id"), shape=run_shape,
                            recipe=settings.get("recipe"))
        # Validation and test metrics are allreduced, so every rank takes the same decision.
        if target is not None and history.get(target_key, [0.0])[-1] >= target:
            target_epoch = epoch + 1
            if clock_started is not None:
                time_to_target = time.time() - clock_started
            break
        if stopper.should_stop(history):
            break
    if test_evaluation is not None and test_evaluation.last_epoch == epoch:
        test = test_evaluation.last  # the final weights were just evaluated on the test split
    elif "test" in settings["split_urls"]:
        test = sharded_evaluate(model, *shards["test"][1:], num_classes, world, batch_size=512,
                                split="test")
    else:
        test = {"loss": None, "accuracy": None, "count": 0, "confusion": None}
    if tensorboard_dir:
        from mlflow.tracking import MlflowClient
        MlflowClient(settings["tracking_uri"]).log_artifacts(
            settings["mlflow_run_id"], tensorboard_dir, "tensorboard")
        shutil.rmtree(tensorboard_dir)

    result = {
        "rank": rank,
        "size": size,
        "weights_sha256": weights_digest(model),
        "train_shard_size": int(train_count),
        "input": "stream" if stream else "memory",
        "steps_per_epoch": int(steps),
        "backward_passes_per_step": settings.get("backward_passes_per_step", 1),
        "steps_per_execution": int(model.steps_per_execution.numpy()),
        "allreduce_gradients": optimizer is not local_optimizer,
        "built": describe_built(model, local_optimizer),
        "horovod": world.horovod,
        "first_epoch": first_epoch,
        "target_epoch": target_epoch,
        "time_to_target_seconds": time_to_target,
        "read_seconds": round(read_seconds, 3),
        "train_seconds": round(time.time() - started - read_seconds, 3),
        **devices,
    }
    if settings.get("return_shard_indices"):
        result["train_indices"] = streamed.indices() if stream else train_index.tolist()
        result["seen_per_epoch"] = seen
    if rank == 0:
        result.update({
            "history": history,
            "test_loss": test["loss"], "test_accuracy": test["accuracy"],
            "test_count": test["count"], "test_confusion": test["confusion"],
            "weights": model.get_weights(),
        })
    return result


def _schedule_params(settings: dict) -> dict:
    params = dict(settings["schedule_options"])
    if settings["schedule"] == "cosine":
        params["final_lr_fraction"] = settings["final_lr_fraction"]
    return params
