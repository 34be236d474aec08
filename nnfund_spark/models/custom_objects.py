"""Every custom Keras object the project defines, in one module.

Importing this module registers them all (``register_keras_serializable``, package
``nnfund_spark``), so a saved model that uses them — the MLflow model, a checkpoint — loads with
plain ``tf.keras.models.load_model`` once this module has been imported. They live at module
level (not inside functions) so pickling, e.g. by MLflow's cloudpickle of custom objects or by
Spark, finds them by name.

This module imports TensorFlow at the top; the builders import it only when building a model,
so the driver-side code that merely names models stays TensorFlow-free.
"""
from __future__ import annotations

import tensorflow as tf

PACKAGE = "nnfund_spark"


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class HeavisideStep(tf.keras.layers.Layer):
    """The perceptron's step: 1 where x > 0 else 0, with a zero (not missing) gradient, so a
    model using it compiles and runs while gradient descent cannot move what lies below it."""

    def call(self, inputs):
        step = tf.cast(inputs > 0, inputs.dtype)
        # 0 * x carries an all-zero gradient back, so optimizers get zeros instead of None.
        return tf.stop_gradient(step) + 0.0 * inputs


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class Maxout(tf.keras.layers.Layer):
    """Maxout (Goodfellow et al. 2013): the max over each group of ``pieces`` consecutive
    channels of the last axis, so C channels become C / pieces."""

    def __init__(self, pieces: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.pieces = pieces

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels % self.pieces:
            raise ValueError(f"maxout with {self.pieces} pieces needs a channel count "
                             f"divisible by {self.pieces}, got {channels}")
        super().build(input_shape)

    def call(self, inputs):
        shape = tf.shape(inputs)
        groups = inputs.shape[-1] // self.pieces
        grouped = tf.reshape(inputs, tf.concat([shape[:-1], [groups, self.pieces]], axis=0))
        return tf.reduce_max(grouped, axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] // self.pieces,)

    def get_config(self):
        return {**super().get_config(), "pieces": self.pieces}


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
def gelu_tanh(inputs):
    """GELU's tanh approximation (Hendrycks & Gimpel 2016) as a named function: an Activation
    layer cannot pass ``approximate=True``, and a lambda would not survive saving."""
    return tf.keras.activations.gelu(inputs, approximate=True)


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class ZeroPadShortcut(tf.keras.layers.Layer):
    """ResNet option-A shortcut (He et al. 2016): keep every ``stride``-th pixel and append
    zero channels up to ``channels``; parameter-free."""

    def __init__(self, channels: int, stride: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stride = stride

    def call(self, inputs):
        subsampled = inputs[:, ::self.stride, ::self.stride, :]
        extra = self.channels - inputs.shape[-1]
        # The new channels are zeros: the block's residual alone fills them.
        return tf.pad(subsampled, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        def shrink(size):
            return None if size is None else -(-size // self.stride)
        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride}


@tf.keras.utils.register_keras_serializable(package=PACKAGE)
class OneHotLoss(tf.keras.losses.Loss):
    """Categorical cross-entropy or MSE on integer labels one-hot encoded inside the loss
    (see ``training.optimizers.make_loss``)."""

    def __init__(self, kind: str, num_classes: int, label_smoothing: float = 0.0,
                 name: str | None = None, **kwargs):
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.num_classes, self.label_smoothing = kind, num_classes, label_smoothing

    def call(self, y_true, y_pred):
        # Labels arrive as (N,) or (N, 1) integers; one_hot of the flattened ids is (N, C).
        labels = tf.reshape(tf.cast(y_true, tf.int32), [-1])
        targets = tf.one_hot(labels, self.num_classes, dtype=y_pred.dtype)
        if self.kind == "mse":
            return tf.reduce_mean(tf.square(y_pred - targets), axis=-1)
        return tf.keras.losses.categorical_crossentropy(
            targets, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "num_classes": self.num_classes,
                "label_smoothing": self.label_smoothing}
