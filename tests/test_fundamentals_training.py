"""Optimizers, losses, learning-rate schedules, augmentation and the dead-ReLU metric."""
import math
import pickle

import numpy as np
import pytest
import tensorflow as tf

from nnfund_spark.training.augment import input_normalization_layer, make_augmenter
from nnfund_spark.training.metrics import dead_relu_fraction
from nnfund_spark.training.optimizers import (OPTIMIZERS, make_loss, make_optimizer,
                                              optimizer_hyperparameters)
from nnfund_spark.training.schedules import learning_rate_at, scaled_base_lr, schedule_function


def _tiny_model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input((4,))
    hidden = tf.keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(3, activation="softmax")(hidden))


# --- optimizers and losses ---------------------------------------------------------------------

@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_takes_a_training_step(name):
    model = _tiny_model()
    optimizer = make_optimizer(name, 0.05)
    assert optimizer.__module__.startswith("keras.src.optimizers")  # not the legacy ones
    model.compile(optimizer=optimizer, loss=make_loss("categorical_crossentropy", 3))
    images = np.random.RandomState(1).normal(size=(6, 4)).astype(np.float32)
    before = [weight.copy() for weight in model.get_weights()]
    model.train_on_batch(images, np.array([0, 1, 2, 0, 1, 2]))
    assert any(not np.allclose(old, new) for old, new in zip(before, model.get_weights()))
    assert int(optimizer.iterations.numpy()) == 1


def test_optimizer_hyperparameters_reach_keras():
    nesterov = make_optimizer("nesterov", 0.1, momentum=0.8)
    assert nesterov.nesterov and nesterov.momentum == pytest.approx(0.8)
    assert make_optimizer("momentum", 0.1).momentum == pytest.approx(0.9)
    assert make_optimizer("sgd", 0.1).momentum == 0.0
    adam = make_optimizer("adam", 1e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-8, amsgrad=True)
    assert (adam.beta_1, adam.beta_2, adam.epsilon, adam.amsgrad) == (0.8, 0.99, 1e-8, True)
    assert make_optimizer("adagrad", 0.01, initial_accumulator_value=0.5) \
        .initial_accumulator_value == 0.5
    assert make_optimizer("adadelta", 1.0, rho=0.9).rho == pytest.approx(0.9)
    assert make_optimizer("rmsprop", 1e-3, centered=True).centered
    assert float(make_optimizer("adamax", 2e-3).learning_rate.numpy()) == pytest.approx(2e-3)
    assert make_optimizer("sgd", 0.1, weight_decay=1e-4).weight_decay == pytest.approx(1e-4)


def test_bad_optimizer_settings_are_named():
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'; available: sgd, momentum"):
        make_optimizer("adamw", 0.1)
    with pytest.raises(ValueError, match="optimizer 'adam' does not accept beta1, momentum; "
                                         "accepted: amsgrad, beta_1, beta_2, clipnorm, epsilon"):
        make_optimizer("adam", 0.1, beta1=0.9, momentum=0.9)
    with pytest.raises(ValueError, match="'sgd' does not accept momentum; accepted: clipnorm, "
                                         "global_clipnorm, weight_decay"):
        make_optimizer("sgd", 0.1, momentum=0.9)  # that is what "momentum" is for
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 1.5"):
        make_optimizer("momentum", 0.1, momentum=1.5)
    with pytest.raises(ValueError, match="centered must be true or false, got 'yes'"):
        make_optimizer("rmsprop", 0.1, centered="yes")
    with pytest.raises(ValueError, match="learning_rate must be a number > 0, got 0"):
        make_optimizer("sgd", 0)
    assert set(optimizer_hyperparameters("adagrad")) == {
        "initial_accumulator_value", "epsilon", "weight_decay", "clipnorm", "global_clipnorm"}


def test_losses_on_integer_labels():
    probabilities = tf.constant([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = tf.constant([0, 2])
    expected_ce = -(math.log(0.7) + math.log(0.8)) / 2
    assert float(make_loss("categorical_crossentropy", 3)(labels, probabilities)) \
        == pytest.approx(expected_ce, rel=1e-5)
    one_hot = make_loss("categorical_crossentropy", 3, one_hot=True)
    assert float(one_hot(labels, probabilities)) == pytest.approx(expected_ce, rel=1e-5)
    # MSE against one_hot(label): ((0.3² + 0.2² + 0.1²) / 3 + (0.1² + 0.1² + 0.2²) / 3) / 2
    expected_mse = ((0.09 + 0.04 + 0.01) / 3 + (0.01 + 0.01 + 0.04) / 3) / 2
    mse = make_loss("mse", 3)
    assert float(mse(labels, probabilities)) == pytest.approx(expected_mse, rel=1e-5)
    assert float(mse(tf.reshape(labels, (2, 1)), probabilities)) == pytest.approx(expected_mse,
                                                                                  rel=1e-5)
    smoothed = make_loss("categorical_crossentropy", 3, one_hot=True, label_smoothing=0.1)
    assert float(smoothed(labels, probabilities)) > expected_ce
    model = _tiny_model()
    model.compile(optimizer=make_optimizer("sgd", 0.1), loss=mse, metrics=["accuracy"])
    history = model.fit(np.ones((4, 4), np.float32), np.array([0, 1, 2, 1]), verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "accuracy" in history.history
    with pytest.raises(ValueError, match="unknown loss 'hinge'; available: "
                                         "categorical_crossentropy, mse"):
        make_loss("hinge", 3)
    with pytest.raises(ValueError, match="label_smoothing needs"):
        make_loss("categorical_crossentropy", 3, label_smoothing=0.1)


# --- schedules ---------------------------------------------------------------------------------

def test_cosine_reproduces_the_worker_schedule():
    peak, steps_per_epoch, epochs = 0.002, 100, 10

    def cosine(step, warmup_epochs=1.0, final=0.05):
        return learning_rate_at(step, "cosine", peak, steps_per_epoch, epochs,
                                warmup_epochs=warmup_epochs, final_lr_fraction=final)

    # Warm-up from a tenth of the peak, then cosine down to final_lr_fraction of it.
    assert cosine(0) == pytest.approx(peak * 0.1)
    assert cosine(50) == pytest.approx(peak * 0.55)
    assert cosine(100) == pytest.approx(peak)
    assert cosine(550) == pytest.approx(peak * (0.05 + 0.95 * 0.5))
    assert cosine(1000) == pytest.approx(peak * 0.05)
    assert cosine(700, warmup_epochs=0, final=1.0) == peak
    values = [cosine(step) for step in range(1000)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values[100:], values[101:]))


def test_schedule_values_at_known_steps():
    def at(step, schedule, **params):
        return learning_rate_at(step, schedule, 0.1, 100, 90, **params)

    assert at(0, "constant") == at(8999, "constant") == 0.1
    assert at(0, "constant", warmup_epochs=2) == pytest.approx(0.01)     # warm-up from peak/10
    assert at(100, "constant", warmup_epochs=2) == pytest.approx(0.055)  # halfway
    assert at(200, "constant", warmup_epochs=2) == pytest.approx(0.1)
    assert at(2999, "step") == pytest.approx(0.1) and at(3000, "step") == pytest.approx(0.01)
    assert at(6000, "step") == pytest.approx(0.001)
    assert at(2000, "step", drop_every_epochs=10, drop_factor=0.5) == pytest.approx(0.025)
    assert at(3000, "step", warmup_epochs=5) == pytest.approx(0.01)  # drops keep their epochs
    assert at(1000, "exponential", decay_rate=0.9) == pytest.approx(0.1 * 0.9 ** 10)
    assert at(250, "exponential", decay_rate=0.9) == pytest.approx(0.1 * 0.9 ** 2.5)
    assert at(300, "exponential", decay_rate=0.9, warmup_epochs=1) == pytest.approx(0.1 * 0.81)
    assert at(4500, "cosine", final_lr_fraction=0.0) == pytest.approx(0.05)
    assert at(9000, "cosine") == pytest.approx(0.005)
    assert at(20000, "cosine") == pytest.approx(0.005)  # past the end: stays at the floor


def test_bad_schedule_settings_are_named():
    with pytest.raises(ValueError, match="unknown schedule 'linear'; available: constant, step, "
                                         "exponential, cosine"):
        learning_rate_at(0, "linear", 0.1, 100, 10)
    with pytest.raises(ValueError, match="schedule 'step' does not accept decay_rate; accepted: "
                                         "drop_every_epochs, drop_factor, warmup_epochs"):
        learning_rate_at(0, "step", 0.1, 100, 10, decay_rate=0.9)
    with pytest.raises(ValueError, match="final_lr_fraction must be a number in \\[0, 1\\]"):
        learning_rate_at(500, "cosine", 0.1, 100, 10, final_lr_fraction=2)
    with pytest.raises(ValueError, match="steps_per_epoch must be a number > 0, got 0"):
        learning_rate_at(0, "constant", 0.1, 0, 10)
    # A bad value fails at once, even when the first steps (warm-up) would not use it.
    with pytest.raises(ValueError, match="drop_factor must be a number > 0, got -0.1"):
        schedule_function("step", 0.1, 100, 10, warmup_epochs=2, drop_factor=-0.1)
    function = pickle.loads(pickle.dumps(schedule_function("exponential", 0.1, 100, 10,
                                                           decay_rate=0.5)))
    assert function(200) == pytest.approx(0.025)  # picklable for Spark executors


def test_scaled_base_lr():
    assert scaled_base_lr(0.001, 4) == pytest.approx(0.004)
    assert scaled_base_lr(0.001, 4, "sqrt") == pytest.approx(0.002)
    assert scaled_base_lr(0.001, 4, False) == scaled_base_lr(0.001, 4, "none") == 0.001
    with pytest.raises(ValueError, match="unknown learning-rate scaling 'square'"):
        scaled_base_lr(0.001, 4, "square")
    with pytest.raises(ValueError, match="world_size must be an integer >= 1, got 0"):
        scaled_base_lr(0.001, 0)


# --- augmentation and input normalization ------------------------------------------------------

IMAGES = np.random.RandomState(0).randint(0, 256, (8, 12, 12, 3)).astype(np.float32)


@pytest.mark.parametrize("augmentations", [{"random_crop": 2}, {"flip": True}, {"scale": 0.2},
                                           {"rotation": 20}, {"translation": 0.2},
                                           {"noise": 8.0}])
def test_each_augmentation_changes_images_but_not_shape_dtype_or_labels(augmentations):
    augment = make_augmenter(augmentations, IMAGES.shape[1:], seed=7)
    labels = tf.range(8)
    outputs, out_labels = augment(tf.constant(IMAGES), labels)
    assert outputs.shape == IMAGES.shape and outputs.dtype == tf.float32
    assert np.array_equal(out_labels.numpy(), labels.numpy())
    assert not np.array_equal(outputs.numpy(), IMAGES)
    assert outputs.numpy().min() >= 0.0 and outputs.numpy().max() <= 255.0
    # The same seed reproduces the same transforms.
    again, _ = make_augmenter(augmentations, IMAGES.shape[1:], seed=7)(tf.constant(IMAGES), labels)
    np.testing.assert_array_equal(again.numpy(), outputs.numpy())


def test_flip_mirrors_some_images_and_crop_is_a_zero_filled_integer_shift():
    flipped, _ = make_augmenter({"flip": True}, IMAGES.shape[1:], seed=3)(IMAGES, None)
    mirrored = [np.array_equal(image, original[:, ::-1]) for image, original in
                zip(flipped.numpy(), IMAGES)]
    unchanged = [np.array_equal(image, original) for image, original in
                 zip(flipped.numpy(), IMAGES)]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)
    cropped, _ = make_augmenter({"random_crop": 2}, IMAGES.shape[1:], seed=3)(IMAGES, None)
    for image, original in zip(cropped.numpy(), IMAGES):
        padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
        assert any(np.array_equal(image, padded[dy:dy + 12, dx:dx + 12])
                   for dy in range(5) for dx in range(5))


def test_augmenter_maps_over_a_batched_dataset_and_validates():
    augment = make_augmenter({"random_crop": 1, "noise": 2.0}, (12, 12, 3), seed=1)
    dataset = tf.data.Dataset.from_tensor_slices((IMAGES, np.arange(8))).batch(4).map(augment)
    batches = list(dataset)
    assert [tuple(images.shape) for images, _ in batches] == [(4, 12, 12, 3)] * 2
    assert make_augmenter({}, (12, 12, 3), seed=1) is None
    assert make_augmenter({"flip": False, "noise": 0}, (12, 12, 3), seed=1) is None
    with pytest.raises(ValueError, match="unknown augmentation 'cutout'; available: random_crop"):
        make_augmenter({"cutout": 8}, (12, 12, 3), seed=1)
    with pytest.raises(ValueError, match="'scale': must be a fraction below 1, got 1.5"):
        make_augmenter({"scale": 1.5}, (12, 12, 3), seed=1)
    with pytest.raises(ValueError, match="'random_crop': padding must be a whole number"):
        make_augmenter({"random_crop": 2.5}, (12, 12, 3), seed=1)
    with pytest.raises(ValueError, match="'random_crop': padding must be below the image size "
                                         "12x12, got 12"):
        make_augmenter({"random_crop": 12}, (12, 12, 3), seed=1)


def test_input_normalization_ranges():
    pixels = tf.constant([[0.0, 127.5, 255.0]])
    np.testing.assert_allclose(input_normalization_layer("unit")(pixels), [[0, 0.5, 1]])
    np.testing.assert_allclose(input_normalization_layer("symmetric")(pixels), [[-1, 0, 1]])
    standardize = input_normalization_layer("standardize", mean=[0.5], std=[0.25])
    np.testing.assert_allclose(standardize(pixels[..., None])[..., 0], [[-2, 0, 2]], rtol=1e-5)
    with pytest.raises(ValueError, match="unknown input normalization 'zscore'; available: "
                                         "unit, symmetric, standardize"):
        input_normalization_layer("zscore")
    with pytest.raises(ValueError, match="every std must be > 0"):
        input_normalization_layer("standardize", mean=[0.5], std=[0.0])


# --- dead ReLUs --------------------------------------------------------------------------------

def test_dead_relu_fraction_counts_units_that_never_fire():
    model = _tiny_model()
    hidden = model.get_layer("hidden")
    kernel, bias = hidden.get_weights()
    kernel[:, :3], bias[:3] = 0.0, -1.0  # three of eight units can never fire
    kernel[:, 3:], bias[3:] = 0.0, 1.0   # the other five always do
    hidden.set_weights([kernel, bias])
    result = dead_relu_fraction(model, np.random.RandomState(0).normal(size=(16, 4)))
    assert result == {"dead_fraction": 3 / 8, "dead_units": 3, "units": 8,
                      "layers": {"hidden": 3 / 8}}


def test_dead_relu_fraction_on_conv_positions_and_channels():
    from nnfund_spark.models import build_model
    from nnfund_spark.training.metrics import relu_layers
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    conv1 = model.get_layer("conv1")
    kernel, bias = conv1.get_weights()
    kernel[..., :8], bias[:8] = -1.0, -1.0   # channels 0-7: negative on any image, dead
    kernel[..., 8:], bias[8:] = 0.0, 1.0     # channels 9-31: always 1, alive
    kernel[..., 8], bias[8] = 1.0, -1.0      # channel 8 fires only where its patch is bright
    conv1.set_weights([kernel, bias])
    images = np.zeros((3, 28, 28, 1), np.float32)
    images[:, :, 14:] = 255.0  # dark left half: channel 8's 3x3 patches at columns 0-11 see 0
    per_position = dead_relu_fraction(model, images, batch_size=2)
    per_channel = dead_relu_fraction(model, images, per_channel=True)
    assert set(per_position["layers"]) == {"conv1", "conv2", "dense"}
    assert per_position["units"] == 26 * 26 * 32 + 24 * 24 * 64 + 128
    assert per_channel["units"] == 32 + 64 + 128
    assert per_position["layers"]["conv1"] == (8 * 26 * 26 + 26 * 12) / (32 * 26 * 26)
    assert per_channel["layers"]["conv1"] == 8 / 32  # channel 8 lives somewhere
    # With a normalization the ReLUs are separate Activation layers; they are found too.
    normalized = build_model("mnist_cnn", (28, 28, 1), 10, normalization="batch")
    assert [layer.name for layer in relu_layers(normalized)] == [
        "conv1_relu", "conv2_relu", "dense_relu"]
    with pytest.raises(ValueError, match="has no ReLU layers"):
        dead_relu_fraction(build_model("lenet5", (28, 28, 1), 10, activation="tanh"), images)


def test_step_table_rate_is_applied_per_step_in_the_train_step():
    """The rate table runs inside the compiled step: with loss = w (gradient 1), plain SGD moves
    w by exactly the table's rate at every step, and past the table's end by its last rate. It
    survives the config round trip hvd.DistributedOptimizer does."""
    import tensorflow as tf

    from nnfund_spark.training.callbacks import StepTableRate

    table = StepTableRate([0.1, 0.2, 0.3, 0.4])
    optimizer = make_optimizer("sgd", table)
    rebuilt = type(optimizer).from_config(optimizer.get_config())
    assert rebuilt.get_config()["learning_rate"]["config"]["rates"] == table.rates
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(
        1, use_bias=False, kernel_initializer="zeros")])
    model.compile(rebuilt, loss=lambda y_true, y_pred: tf.reduce_mean(y_pred))
    model.fit(np.ones((5, 1), np.float32), np.zeros((5, 1), np.float32), batch_size=1,
              epochs=1, shuffle=False, verbose=0)
    assert float(model.get_weights()[0][0, 0]) == pytest.approx(-(0.1 + 0.2 + 0.3 + 0.4 + 0.4))
    assert [table.rate_after(n) for n in (0, 1, 4, 9)] == [0.1, 0.1, 0.4, 0.4]
    with pytest.raises(ValueError, match="at least one step"):
        StepTableRate([])
