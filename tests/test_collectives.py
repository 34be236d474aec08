"""Which ranks start Horovod, and the one-rank collectives used when it is not started."""
import numpy as np
import pytest

from nnfund_spark.training import collectives


@pytest.mark.parametrize("size, k, expected", [(1, 1, False), (2, 1, True), (1, 4, True),
                                               (8, 2, True)])
def test_horovod_is_started_unless_one_rank_never_allreduces(size, k, expected):
    assert collectives.needs_horovod(size, k) is expected


def test_a_world_of_one_uses_local_collectives(monkeypatch):
    monkeypatch.setenv("HOROVOD_SIZE", "1")
    world = collectives.start(backward_passes_per_step=1)
    assert isinstance(world, collectives.Solo) and not world.horovod
    assert (world.rank, world.size, world.local_rank, world.local_size) == (0, 1, 0, 1)
    values = np.array([1.5, 2.0, 3.0])
    np.testing.assert_array_equal(world.allreduce_sum(values, name="x"), values)
    assert world.allgather_object(7) == [7]
    assert world.metric_average_callbacks() == []


def test_sharded_evaluation_of_one_rank_is_exact():
    import tensorflow as tf

    from nnfund_spark.training.callbacks import sharded_evaluate

    rng = np.random.default_rng(0)
    images = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 50).astype(np.int32)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, "softmax")])
    result = sharded_evaluate(model, images, labels, 3, collectives.Solo(), batch_size=16)
    probabilities = model.predict(images, verbose=0)
    predicted = probabilities.argmax(axis=1)
    assert result["count"] == 50
    assert result["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    assert result["loss"] == pytest.approx(
        float(-np.log(probabilities[np.arange(50), labels]).mean()), rel=1e-5)
    assert np.array(result["confusion"]).sum(axis=1).tolist() == np.bincount(labels, minlength=3).tolist()
    with pytest.raises(ValueError, match="the test split is empty on every rank"):
        sharded_evaluate(model, None, np.zeros(0, np.int32), 3, collectives.Solo(), split="test")


@pytest.mark.parametrize("env, expected", [
    ({"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "HOROVOD_LOCAL_RANK": "1",
      "HOROVOD_LOCAL_SIZE": "2"}, (1, 2, 1, 2)),
    # mpirun (train.controller=mpi) exports Open MPI's names instead
    ({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4",
      "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, (3, 4, 1, 2)),
    ({}, (0, 1, 0, 1)),  # no launcher: a world of one
])
def test_a_rank_knows_itself_from_either_launcher(monkeypatch, env, expected):
    for names in collectives._LAUNCHER_ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    defaults = {"rank": 0, "size": 1, "local_rank": 0, "local_size": 1}
    assert tuple(collectives.launcher_value(name, default)
                 for name, default in defaults.items()) == expected


def test_the_epoch_line_leaves_out_what_the_epoch_did_not_compute():
    from nnfund_spark.training.callbacks import epoch_line

    full = {"loss": 0.25, "accuracy": 0.9, "val_loss": 0.3, "val_accuracy": 0.88,
            "learning_rate": 1e-3}
    assert epoch_line(0, full, 6000, 2.0) == ("epoch 1: loss 0.2500 acc 0.9000 val_loss 0.3000 "
                                              "val_acc 0.8800 lr 1.00e-03 3000 img/s 2.0s")
    # No validation split: the sharded evaluation reports nan, the line omits it.
    empty_split = {"loss": 0.25, "accuracy": 0.9, "val_loss": float("nan"),
                   "val_accuracy": float("nan"), "test_accuracy": 0.95, "learning_rate": 1e-3}
    assert epoch_line(2, empty_split, 6000, 3.0) == ("epoch 3: loss 0.2500 acc 0.9000 "
                                                     "test_acc 0.9500 lr 1.00e-03 2000 img/s 3.0s")


def test_epoch_throughput_is_timed_before_the_evaluation_callbacks():
    """images/s and epoch_seconds measure training: a slow evaluation placed after EpochClock
    (as the validation and test evaluations are in a rank's list) is not in them, while the
    job clock (elapsed_seconds) still counts it."""
    import time

    import numpy as np
    import tensorflow as tf

    from nnfund_spark.training.callbacks import EpochClock, EpochLogger

    class SlowEvaluation(tf.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(0.6)
            logs["val_accuracy"] = 0.5

    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile("sgd", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = np.zeros((64, 4), np.float32), np.zeros((64,), np.int32)
    started = time.time()
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[
        EpochClock(64), SlowEvaluation(), EpochLogger(64, verbose=0, job_started=started)]).history
    # Each epoch's wall time (on the job clock) holds the 0.6 s evaluation; epoch_seconds not.
    seconds, elapsed = history["epoch_seconds"], history["elapsed_seconds"]
    assert elapsed[0] >= seconds[0] + 0.6 and elapsed[1] - elapsed[0] >= seconds[1] + 0.6, history
    assert history["images_per_second"][1] == 64 / history["epoch_seconds"][1]
    # Without a clock in front, the logger times the whole epoch end itself.
    alone = model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[
        SlowEvaluation(), EpochLogger(64, verbose=0)]).history
    assert alone["epoch_seconds"][0] >= 0.6


def test_early_stopping_counts_epochs_since_the_best_in_the_metric_direction():
    from nnfund_spark.training.callbacks import EarlyStopper

    loss, accuracy = EarlyStopper("val_loss", 2), EarlyStopper("val_accuracy", 2)
    # The best loss was 2 epochs ago: stop; 1 epoch ago: go on.
    assert loss.should_stop({"val_loss": [0.5, 0.3, 0.4, 0.35]})
    assert not loss.should_stop({"val_loss": [0.5, 0.4, 0.3, 0.35]})
    # Accuracy improves upwards: the same numbers mean the opposite.
    assert loss.should_stop({"val_loss": [0.5, 0.3, 0.4, 0.6]})
    assert not accuracy.should_stop({"val_accuracy": [0.5, 0.3, 0.4, 0.6]})
    assert accuracy.should_stop({"val_accuracy": [0.9, 0.8, 0.85]})
    # Not before patience + 1 epochs; a tie is no improvement; patience 0 never stops.
    assert not loss.should_stop({"val_loss": [0.5, 0.6]})
    assert loss.should_stop({"val_loss": [0.5, 0.5, 0.5]})
    assert not EarlyStopper("val_loss", 0).should_stop({"val_loss": [1, 2, 3, 4]})
    # A diverged (nan) epoch is never the best, whatever position it has.
    nan = float("nan")
    assert loss.should_stop({"val_loss": [nan, 0.3, nan, nan]})
    assert not loss.should_stop({"val_loss": [nan, nan, 0.3, nan]})
    assert loss.should_stop({"val_loss": [nan, nan, nan]})
    assert not accuracy.should_stop({"val_accuracy": [0.1, nan, 0.2]})
