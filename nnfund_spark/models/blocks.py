"""Options shared by every model builder and the layer helpers that apply them.

Every builder accepts these keyword arguments (``COMMON_OPTIONS``); a builder ignores the ones
that do not apply to it (e.g. ``dropout`` in a net without conv layers):

- ``activation`` (default ``relu``) and ``activation_params`` (e.g. ``{"alpha": 0.1}``): any
  name of ``fundamentals.activations.ACTIVATIONS``. Maxout needs k times the channels before it,
  so conv/dense layers followed by maxout get ``pieces`` times as many filters/units.
- ``dropout`` / ``dense_dropout``: rates after conv stages / after hidden dense layers (each
  builder documents where; its signature holds its own default).
- ``l1``, ``l2`` (default 0): penalties on every kernel, output layer included (biases and
  normalization scales are not penalised, as usual); both set gives L1 + L2.
- ``normalization`` (``none`` | ``batch`` | ``layer`` | ``group``), placed between each hidden
  conv/dense layer and its activation (Ioffe & Szegedy 2015). ``layer`` on conv maps is group
  normalization with one group (Wu & He 2018: mean/var over H, W and C, scale/offset per
  channel); ``group`` uses ``gcd(channels, norm_groups)`` groups so narrow layers still work.
  With any normalization the preceding layer has no bias: the normalization's offset replaces it.
- ``norm_groups`` (default 8): groups for ``group`` normalization.
- ``bn_momentum`` (default 0.99, Keras' own): how much of batch normalization's moving mean and
  variance each step keeps (the rest comes from the batch). Lower it for short runs with few
  steps, whose averages would otherwise still be near their initial values.
- ``initializer`` (default ``glorot_uniform``, Keras' own): kernel initializer of every layer.
- ``normalization_input`` (``unit`` | ``symmetric`` | ``standardize``, default ``unit``) with
  ``mean``/``std``: the first layer, see ``training.augment.input_normalization_layer``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

from nnfund_spark.fundamentals.activations import (activation_width_factor, get_activation,
                                                   resolve_parameters)

NORMALIZATIONS = ("none", "batch", "layer", "group")
INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform",
                "lecun_normal")
COMMON_OPTIONS = ("activation", "activation_params", "dropout", "dense_dropout", "l1", "l2",
                  "normalization", "norm_groups", "bn_momentum", "initializer",
                  "normalization_input", "mean", "std")
# Activations Keras knows by name: with no normalization between, they can sit inside the
# Conv2D/Dense layer itself, which keeps e.g. mnist_cnn's layer list exactly as it always was.
_FOLDABLE_ACTIVATIONS = ("relu", "sigmoid", "tanh", "selu", "swish")


def check_rate(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_input_shape(input_shape: Sequence[int], needs_image: bool = True) -> tuple:
    shape = tuple(input_shape)
    if not shape or any(isinstance(size, bool) or not isinstance(size, int) or size < 1
                        for size in shape):
        raise ValueError(f"input_shape must be positive integers, got {input_shape!r}")
    if needs_image and len(shape) != 3:
        raise ValueError(f"this model needs an image input_shape (height, width, channels), "
                         f"got {input_shape!r}")
    return shape


def check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


def check_image_model(input_shape, num_classes, dropout, dense_dropout, common: dict,
                      needs_image: bool = True):
    """What every builder checks before it builds anything, none of which needs TensorFlow:
    the input shape (H, W, C), the class count, the dropout rates and the shared layer options,
    input normalization against the channel count included. Returns (shape, LayerOptions).

    Builders call it (through their own ``check_*`` function in ``zoo.CHECKS``) first, and the
    driver calls the same functions through ``zoo.check_model`` before any rank starts."""
    shape = check_input_shape(input_shape, needs_image=needs_image)
    check_num_classes(num_classes)
    check_rate("dropout", dropout)
    check_rate("dense_dropout", dense_dropout)
    options = LayerOptions(**common)
    options.check_input(shape)
    return shape, options


def check_width_scaled_model(input_shape, num_classes, width, dropout, dense_dropout, common):
    """The checks of a model whose own option is a width multiplier (alexnet, inception),
    without TensorFlow: (shape, LayerOptions, width)."""
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common)
    return shape, options, check_width(width)


def check_positive_integers(name: str, values, allow_empty: bool = False) -> tuple:
    """A list of widths (units, filters): positive integers, as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)) \
            or (not values and not allow_empty) \
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}list of "
                         f"positive integers, got {values!r}")
    return tuple(values)


def valid_size(size: int, window: int, stride: int = 1) -> int:
    """What a 'valid' (unpadded) conv or pool leaves of ``size`` pixels, as Keras computes it
    (the leftover border is dropped); 0 when the window does not fit at all."""
    return (size - window) // stride + 1 if size >= window else 0


@dataclass(frozen=True)
class LayerOptions:
    """The validated common options; builders call its helpers instead of raw Keras layers."""
    activation: str = "relu"
    activation_params: dict = field(default_factory=dict)
    l1: float = 0.0
    l2: float = 0.0
    normalization: str = "none"
    norm_groups: int = 8
    bn_momentum: float = 0.99
    initializer: str = "glorot_uniform"
    normalization_input: str = "unit"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    def __post_init__(self):
        params = dict(self.activation_params or {})
        object.__setattr__(self, "activation_params", params)
        resolve_parameters(self.activation, params)  # ValueError for a bad name or parameter
        for name in ("l1", "l2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization '{self.normalization}'; available: "
                             f"{', '.join(NORMALIZATIONS)}")
        if isinstance(self.norm_groups, bool) or not isinstance(self.norm_groups, int) \
                or self.norm_groups < 1:
            raise ValueError(f"norm_groups must be an integer >= 1, got {self.norm_groups!r}")
        check_rate("bn_momentum", self.bn_momentum)
        if self.initializer not in INITIALIZERS:
            raise ValueError(f"unknown initializer '{self.initializer}'; available: "
                             f"{', '.join(INITIALIZERS)}")

    @property
    def width_factor(self) -> int:
        return activation_width_factor(self.activation, **self.activation_params)

    @property
    def folds_activation(self) -> bool:
        return (self.normalization == "none" and self.activation in _FOLDABLE_ACTIVATIONS
                and not self.activation_params)

    def regularizer(self):
        import tensorflow as tf
        if self.l1 and self.l2:
            return tf.keras.regularizers.L1L2(l1=self.l1, l2=self.l2)
        if self.l1:
            return tf.keras.regularizers.L1(self.l1)
        if self.l2:
            return tf.keras.regularizers.L2(self.l2)
        return None

    def check_input(self, input_shape: Sequence[int]) -> None:
        """The input normalization's mean/std against the image's channel count."""
        from nnfund_spark.training.augment import check_input_normalization
        check_input_normalization(self.normalization_input, self.mean, self.std,
                                  channels=input_shape[-1])

    def inputs(self, input_shape: Sequence[int]):
        """(Input, tensor after the input-normalization layer)."""
        import tensorflow as tf

        from nnfund_spark.training.augment import input_normalization_layer
        inputs = tf.keras.Input(shape=tuple(input_shape), name="image")
        layer = input_normalization_layer(self.normalization_input, self.mean, self.std,
                                          channels=input_shape[-1])
        return inputs, layer(inputs)

    def normalize(self, x, name: str):
        import tensorflow as tf
        layers = tf.keras.layers
        channels = x.shape[-1]
        if self.normalization == "batch":
            return layers.BatchNormalization(momentum=self.bn_momentum, name=f"{name}_bn")(x)
        if self.normalization == "layer":
            if len(x.shape) == 2:
                return layers.LayerNormalization(name=f"{name}_ln")(x)
            return layers.GroupNormalization(groups=1, name=f"{name}_ln")(x)
        if self.normalization == "group":
            groups = math.gcd(channels, self.norm_groups)
            return layers.GroupNormalization(groups=groups, name=f"{name}_gn")(x)
        return x

    def activate(self, x, name: str):
        return get_activation(self.activation, layer_name=f"{name}_{self.activation}",
                              **self.activation_params)(x)

    def conv(self, x, filters: int, kernel_size, name: str, strides=1, padding: str = "same",
             activate: bool = True):
        """Conv2D → normalization → activation (activate=False stops after normalization)."""
        import tensorflow as tf
        fold = activate and self.folds_activation
        x = tf.keras.layers.Conv2D(
            filters * (self.width_factor if activate else 1), kernel_size, strides=strides,
            padding=padding, activation=self.activation if fold else None,
            use_bias=self.normalization == "none", kernel_initializer=self.initializer,
            kernel_regularizer=self.regularizer(), name=name)(x)
        x = self.normalize(x, name)
        return self.activate(x, name) if activate and not fold else x

    def dense(self, x, units: int, name: str):
        """Dense → normalization → activation."""
        import tensorflow as tf
        fold = self.folds_activation
        x = tf.keras.layers.Dense(
            units * self.width_factor, activation=self.activation if fold else None,
            use_bias=self.normalization == "none", kernel_initializer=self.initializer,
            kernel_regularizer=self.regularizer(), name=name)(x)
        x = self.normalize(x, name)
        return x if fold else self.activate(x, name)

    def classifier(self, x, num_classes: int):
        """The softmax output layer every model ends with, named ``probabilities``. It computes
        in float32 under mixed precision too (Keras' advice: a float16 softmax loses the small
        probabilities the loss takes the log of, and the logged float32 model would not
        reproduce what was evaluated)."""
        import tensorflow as tf
        check_num_classes(num_classes)
        return tf.keras.layers.Dense(num_classes, activation="softmax",
                                     kernel_initializer=self.initializer,
                                     kernel_regularizer=self.regularizer(),
                                     dtype="float32", name="probabilities")(x)


def dropout(x, rate: float, name: str):
    """Dropout when rate > 0; no layer at all at 0, so architectures stay minimal."""
    import tensorflow as tf
    return tf.keras.layers.Dropout(rate, name=name)(x) if rate else x


def scaled(width: float, channels: int) -> int:
    """A channel count times the width multiplier, never below 1."""
    return max(1, int(round(channels * width)))


def check_width(width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a number > 0, got {width!r}")
    return float(width)
