"""Keras model builders. Every model takes raw pixel values (0..255) and rescales inside, so a
logged model scores images exactly as they are stored in the prepared dataset.
"""
from __future__ import annotations

from typing import Callable


def _inputs(input_shape):
    import tensorflow as tf
    inputs = tf.keras.Input(shape=tuple(input_shape), name="image")
    return inputs, tf.keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)


def mnist_cnn(input_shape, num_classes, dropout=0.25, dense_dropout=0.5):
    """The series' MNIST CNN: conv 32 -> conv 64 -> max-pool -> dropout -> dense 128 -> dropout.

    1,199,882 parameters on 28x28x1 with 10 classes.
    """
    import tensorflow as tf
    layers = tf.keras.layers
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Dropout(dropout, name="dropout1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="dense")(x)
    x = layers.Dropout(dense_dropout, name="dropout2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="mnist_cnn")


def mlp(input_shape, num_classes, dropout=0.25, dense_dropout=0.5, units=(1000, 1000)):
    """Fully connected net; the default is the Adam paper's MNIST MLP (2 x 1000 ReLU, dropout)."""
    import tensorflow as tf
    layers = tf.keras.layers
    inputs, x = _inputs(input_shape)
    x = layers.Flatten(name="flatten")(x)
    for i, width in enumerate(units, start=1):
        x = layers.Dense(width, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(dense_dropout, name=f"dropout{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="mlp")


def lenet5(input_shape, num_classes, dropout=0.0, dense_dropout=0.0):
    """LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling; 'same' padding on the first conv
    gives the 28x28 MNIST input the paper's 32x32 geometry."""
    import tensorflow as tf
    layers = tf.keras.layers
    inputs, x = _inputs(input_shape)
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="c1")(x)
    x = layers.MaxPooling2D(2, name="s2")(x)
    x = layers.Conv2D(16, 5, activation="relu", name="c3")(x)
    x = layers.MaxPooling2D(2, name="s4")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(120, activation="relu", name="c5")(x)
    x = layers.Dense(84, activation="relu", name="f6")(x)
    if dense_dropout:
        x = layers.Dropout(dense_dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return tf.keras.Model(inputs, outputs, name="lenet5")


MODELS: dict[str, Callable] = {"mnist_cnn": mnist_cnn, "mlp": mlp, "lenet5": lenet5}


def build_model(name: str, input_shape, num_classes: int, **kwargs):
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    return MODELS[name](input_shape, num_classes, **kwargs)
