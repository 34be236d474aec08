"""Activation functions by name: Keras layers for the models, numpy references for plots.

``get_activation(name, **params)`` returns a fresh Keras layer (one per call, because a layer
object may sit at only one place in a model). ``reference(name, **params)`` returns the numpy pair
``(function, derivative)`` used by ``tracking.plots.activation_curves_figure`` and by the tests,
which check that both agree with what TensorFlow computes.

Parameters (anything else is rejected with a ValueError naming it):

- ``leaky_relu``: ``alpha`` (slope for x < 0), default 0.01 as in Maas et al. 2013 (Keras'
  own layer defaults to 0.3, which is far leakier than the paper).
- ``elu``: ``alpha`` (the output saturates at −alpha for x → −∞), default 1.0
  (Clevert et al. 2015).
- ``gelu``: ``approximate`` (tanh approximation instead of the exact erf form), default False.
- ``maxout``: ``pieces`` (k linear pieces per output unit), default 2 (Goodfellow et al. 2013).
  The layer before a maxout must produce ``pieces`` times as many channels as wanted after it;
  the model builders do this for you.
- ``step``: the perceptron's Heaviside step, 1 if x > 0 else 0. Its derivative is 0 wherever it
  exists, so gradient descent cannot train through it: the layer passes a zero gradient (not
  None) so a model using it still compiles and runs, and shows why sigmoid units replaced it.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

# Each name with the parameters it accepts and their defaults.
ACTIVATION_PARAMETERS: dict[str, dict] = {
    "step": {},
    "sigmoid": {},
    "tanh": {},
    "relu": {},
    "leaky_relu": {"alpha": 0.01},
    "elu": {"alpha": 1.0},
    "selu": {},
    "gelu": {"approximate": False},
    "swish": {},
    "maxout": {"pieces": 2},
}
ACTIVATIONS = tuple(ACTIVATION_PARAMETERS)

# SELU's fixed constants (Klambauer et al. 2017); the same values TensorFlow uses.
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def resolve_parameters(name: str, params: dict) -> dict:
    """The defaults for ``name`` updated with ``params``; ValueError for unknown names/params."""
    if name not in ACTIVATION_PARAMETERS:
        raise ValueError(f"unknown activation '{name}'; available: {', '.join(ACTIVATIONS)}")
    accepted = ACTIVATION_PARAMETERS[name]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"activation '{name}' does not accept {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted)) or 'no parameters'}")
    resolved = {**accepted, **params}
    if name == "maxout" and (not isinstance(resolved["pieces"], int) or resolved["pieces"] < 1):
        raise ValueError(f"maxout pieces must be an integer >= 1, got {resolved['pieces']!r}")
    return resolved


def activation_width_factor(name: str, **params) -> int:
    """How many more channels the preceding layer needs (maxout pieces, else 1)."""
    resolved = resolve_parameters(name, params)
    return resolved["pieces"] if name == "maxout" else 1


# --- Keras side --------------------------------------------------------------------------------

def get_activation(name: str, layer_name: str | None = None, **params):
    """A new Keras layer applying activation ``name`` (see the module docstring for params)."""
    import tensorflow as tf

    from nnfund_spark.models import custom_objects

    resolved = resolve_parameters(name, params)
    layers = tf.keras.layers
    if name == "step":
        return custom_objects.HeavisideStep(name=layer_name)
    if name == "maxout":
        return custom_objects.Maxout(pieces=resolved["pieces"], name=layer_name)
    if name == "leaky_relu":
        return layers.LeakyReLU(alpha=resolved["alpha"], name=layer_name)
    if name == "elu":
        return layers.ELU(alpha=resolved["alpha"], name=layer_name)
    if name == "gelu":
        # An Activation layer cannot pass "approximate" to Keras' gelu, so the tanh form is a
        # registered function of its own (a lambda would not survive saving the model).
        if resolved["approximate"]:
            return layers.Activation(custom_objects.gelu_tanh, name=layer_name)
        return layers.Activation("gelu", name=layer_name)
    # sigmoid, tanh, relu, selu, swish: Keras built-ins, serialisable by name.
    return layers.Activation(name, name=layer_name)



# --- numpy references (for plots and for checking the Keras side) ------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _normal_cdf(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def _gelu_tanh_pair(x):
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)
    tanh = np.tanh(inner)
    d_inner = math.sqrt(2.0 / math.pi) * (1.0 + 3 * 0.044715 * x ** 2)
    return 0.5 * x * (1.0 + tanh), 0.5 * (1.0 + tanh) + 0.5 * x * (1.0 - tanh ** 2) * d_inner


# Maxout learns its pieces, so it has no fixed curve; the plot shows k fixed illustrative lines
# (slopes spread from 1 down to -0.5, no intercepts). With slopes (1, 0) it would be exactly ReLU.
def _maxout_slopes(pieces: int) -> np.ndarray:
    return np.linspace(1.0, -0.5, pieces) if pieces > 1 else np.ones(1)


def reference(name: str, **params) -> tuple[Callable, Callable]:
    """Numpy ``(function, derivative)`` for ``name``, for arrays and plain numbers alike. At the
    kink x = 0 the derivative is the value TensorFlow computes: the left-hand one for relu,
    leaky_relu and elu (relu'(0) = 0), the right-hand one for selu (TensorFlow's SeluGrad takes
    the linear branch at 0: selu'(0) = scale)."""
    resolved = resolve_parameters(name, params)
    alpha = resolved.get("alpha")
    if name == "step":
        return ((lambda x: (np.asarray(x) > 0).astype(float)),
                (lambda x: np.zeros_like(x, dtype=float)))
    if name == "sigmoid":
        return _sigmoid, (lambda x: _sigmoid(x) * (1.0 - _sigmoid(x)))
    if name == "tanh":
        return np.tanh, (lambda x: 1.0 - np.tanh(x) ** 2)
    if name == "relu":
        return (lambda x: np.maximum(x, 0.0)), (lambda x: (np.asarray(x) > 0).astype(float))
    if name == "leaky_relu":
        return (lambda x: np.where(x > 0, x, alpha * x)), (lambda x: np.where(x > 0, 1.0, alpha))
    if name == "elu":
        return (lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))),
                lambda x: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0))))
    if name == "selu":
        return (lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                lambda x: SELU_SCALE * np.where(x >= 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))))
    if name == "gelu":
        if resolved["approximate"]:
            return (lambda x: _gelu_tanh_pair(x)[0]), (lambda x: _gelu_tanh_pair(x)[1])
        density = lambda x: np.exp(-0.5 * x ** 2) / math.sqrt(2.0 * math.pi)  # noqa: E731
        return (lambda x: x * _normal_cdf(x)), (lambda x: _normal_cdf(x) + x * density(x))
    if name == "swish":
        return (lambda x: x * _sigmoid(x),
                lambda x: _sigmoid(x) + x * _sigmoid(x) * (1.0 - _sigmoid(x)))
    slopes = _maxout_slopes(resolved["pieces"])  # maxout
    return (lambda x: np.max(np.multiply.outer(x, slopes), axis=-1),
            lambda x: slopes[np.argmax(np.multiply.outer(x, slopes), axis=-1)])
