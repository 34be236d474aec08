"""Optimizers and losses by name, with their hyperparameters validated.

``make_optimizer`` builds the non-legacy ``tf.keras.optimizers`` classes (TF >= 2.11), which
Horovod 0.28's ``hvd.DistributedOptimizer`` wraps; wrap the result there, not here, so this
module stays usable without Horovod. Unknown hyperparameters are rejected with the list the
optimizer accepts, so a sweep typo (``beta1`` for ``beta_1``) cannot silently train with a
default.

Defaults are Keras' own except where the course's method is defined by its value: ``momentum``
and ``nesterov`` use momentum 0.9 (the usual choice; plain ``sgd`` has none). Note Adadelta was
designed to need no learning rate (the paper's updates correspond to 1.0), while Keras defaults
it to 0.001: pass ``learning_rate=1.0`` to follow Zeiler 2012.
"""
from __future__ import annotations

# Per optimizer: the Keras class and its tunable hyperparameters with the defaults used here.
_SPECIFIC = {
    "sgd": ("SGD", {}),
    "momentum": ("SGD", {"momentum": 0.9}),
    "nesterov": ("SGD", {"momentum": 0.9}),
    "adagrad": ("Adagrad", {"initial_accumulator_value": 0.1, "epsilon": 1e-7}),
    "adadelta": ("Adadelta", {"rho": 0.95, "epsilon": 1e-7}),
    "rmsprop": ("RMSprop", {"rho": 0.9, "momentum": 0.0, "epsilon": 1e-7, "centered": False}),
    "adam": ("Adam", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": False}),
    "adamax": ("Adamax", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
    "nadam": ("Nadam", {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}),
}
# Accepted by every optimizer: decoupled weight decay (Loshchilov & Hutter) and clipping;
# None = off.
_SHARED = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None}
OPTIMIZERS = tuple(_SPECIFIC)
LOSSES = ("categorical_crossentropy", "mse")

# Allowed range per hyperparameter: (low, high, low inclusive, high inclusive), or bool.
_RANGES = {
    "momentum": (0.0, 1.0, True, False),
    "rho": (0.0, 1.0, False, False),
    "beta_1": (0.0, 1.0, True, False),
    "beta_2": (0.0, 1.0, False, False),
    "epsilon": (0.0, float("inf"), False, False),
    "initial_accumulator_value": (0.0, float("inf"), True, False),
    "weight_decay": (0.0, float("inf"), True, False),
    "clipnorm": (0.0, float("inf"), False, False),
    "global_clipnorm": (0.0, float("inf"), False, False),
}
_BOOLEANS = ("centered", "amsgrad")


def optimizer_hyperparameters(name: str) -> dict:
    """The hyperparameters ``make_optimizer(name, ...)`` accepts, with their defaults."""
    if name not in _SPECIFIC:
        raise ValueError(f"unknown optimizer '{name}'; available: {', '.join(OPTIMIZERS)}")
    return {**_SPECIFIC[name][1], **_SHARED}


def check_hyperparameter(optimizer: str, key: str, value) -> None:
    """ValueError naming the optimizer and the key when value is out of its range."""
    if key in _BOOLEANS:
        if not isinstance(value, bool):
            raise ValueError(f"optimizer '{optimizer}': {key} must be true or false, "
                             f"got {value!r}")
        return
    if value is None and key in _SHARED:
        return
    low, high, low_inclusive, high_inclusive = _RANGES[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not (low <= value if low_inclusive else low < value) or \
            not (value <= high if high_inclusive else value < high):
        opening, closing = "[" if low_inclusive else "(", "]" if high_inclusive else ")"
        interval = f"{opening}{low:g}, {high:g}{closing}"
        raise ValueError(f"optimizer '{optimizer}': {key} must be a number in {interval}, "
                         f"got {value!r}")


def make_optimizer(name: str, learning_rate, **hyperparameters):
    """A fresh ``tf.keras.optimizers`` instance for ``name`` (one of ``OPTIMIZERS``);
    ``learning_rate`` is a number > 0 or a ``tf.keras.optimizers.schedules``
    LearningRateSchedule (the per-step table the ranks train with)."""
    import tensorflow as tf

    accepted = optimizer_hyperparameters(name)
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(f"optimizer '{name}' does not accept {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted))}")
    if isinstance(learning_rate, tf.keras.optimizers.schedules.LearningRateSchedule):
        pass
    elif isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a number > 0, got {learning_rate!r}")
    else:
        learning_rate = float(learning_rate)
    for key, value in hyperparameters.items():
        check_hyperparameter(name, key, value)
    settings = {key: value for key, value in {**accepted, **hyperparameters}.items()
                if value is not None}
    if name == "nesterov":
        settings["nesterov"] = True
    class_name = _SPECIFIC[name][0]
    return getattr(tf.keras.optimizers, class_name)(learning_rate=learning_rate, **settings)


def make_loss(name: str, num_classes: int, one_hot: bool = False, label_smoothing: float = 0.0):
    """The training loss for a softmax model fed **integer** labels (what the datasets hold).

    - ``categorical_crossentropy``: sparse categorical cross-entropy on the integer labels.
      With ``one_hot=True`` (required for ``label_smoothing`` > 0) the labels are one-hot
      encoded inside the loss and plain categorical cross-entropy is used; the value is the same
      when there is no smoothing.
    - ``mse``: mean squared error between the softmax probabilities and the one-hot encoding
      of the integer label (``tf.one_hot(label, num_classes)``), averaged over the classes: the
      quadratic cost of the course's first networks. Always one-hot, whatever ``one_hot`` says.

    The data pipeline therefore never changes with the loss, and ``accuracy`` keeps working on
    the integer labels.
    """
    import tensorflow as tf

    if name not in LOSSES:
        raise ValueError(f"unknown loss '{name}'; available: {', '.join(LOSSES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0 <= label_smoothing < 1:
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    if label_smoothing and not (name == "categorical_crossentropy" and one_hot):
        raise ValueError("label_smoothing needs loss 'categorical_crossentropy' with "
                         "one_hot=True (it smooths one-hot targets)")
    if name == "categorical_crossentropy" and not one_hot:
        return tf.keras.losses.SparseCategoricalCrossentropy(name="categorical_crossentropy")
    from nnfund_spark.models.custom_objects import OneHotLoss
    return OneHotLoss(name, num_classes, float(label_smoothing))
