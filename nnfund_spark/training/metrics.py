"""Diagnostics computed from a model and a batch, for callbacks and notebooks.

Dead ReLUs: a ReLU unit whose input is ≤ 0 for every example outputs 0 and passes no gradient,
so it can stop learning for good (too large a learning rate is the usual cause). The fraction of
such units on a validation batch is a cheap health signal to log every epoch.

What counts as a ReLU unit: the output of any top-level layer whose activation is ``relu`` —
a Conv2D/Dense built with ``activation="relu"`` or a separate ``Activation("relu")`` / ``ReLU``
layer (how the model zoo applies activations after a normalization). Leaky/ELU/other
activations are not counted: they never output a flat zero.

A unit is dead when its output is 0 for **every** example of the batch. For conv layers the
default unit is one channel at one position (``per_channel=False``): each position of a feature
map is its own neuron with its own pre-activation, as in the course's "depth column" picture,
and border positions can die while the centre lives. With ``per_channel=True`` a channel (one
filter) is dead only if it is 0 at every position of every example, i.e. the whole filter is
useless. Dense units are the same either way.

This is a pure function (it does not change the model): with Horovod each rank measures its own
batch; log rank 0's value or average across ranks.
"""
from __future__ import annotations

import numpy as np


def relu_layers(model) -> list:
    """Top-level layers of ``model`` whose output is a ReLU (see the module docstring)."""
    import tensorflow as tf

    found = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.ReLU):
            # Only the plain ReLU: a negative slope or threshold makes it another function.
            config = layer.get_config()
            if not config.get("negative_slope") and not config.get("threshold") \
                    and config.get("max_value") is None:
                found.append(layer)
        elif isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense,
                                tf.keras.layers.Activation)) and \
                getattr(getattr(layer, "activation", None), "__name__", None) == "relu":
            found.append(layer)
    return found


def dead_relu_fraction(model, images, per_channel: bool = False, batch_size: int = 256) -> dict:
    """The fraction of ReLU units that output 0 for every example in ``images``.

    Returns ``{"dead_fraction": float, "dead_units": int, "units": int,
    "layers": {layer name: dead fraction}}``. ``images`` are what the model takes (raw pixels
    for the zoo's models). Dropout is inactive (inference mode), so the answer is deterministic.
    Raises ValueError when the model has no ReLU layer or ``images`` is empty.
    """
    import tensorflow as tf

    layers = relu_layers(model)
    if not layers:
        raise ValueError(f"model '{model.name}' has no ReLU layers to measure (only relu "
                         f"activations are counted)")
    images = np.asarray(images)
    if images.ndim == 0 or len(images) == 0:
        raise ValueError("dead_relu_fraction needs at least one example")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    alive = [None] * len(layers)
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start:start + batch_size].astype(np.float32), training=False)
        if len(layers) == 1:
            outputs = [outputs]
        for index, output in enumerate(outputs):
            active = output.numpy() > 0
            # Collapse the batch axis, and for per-channel also every spatial axis.
            axes = tuple(range(active.ndim - 1)) if per_channel else (0,)
            active = active.any(axis=axes)
            alive[index] = active if alive[index] is None else alive[index] | active
    per_layer, dead_units, units = {}, 0, 0
    for layer, layer_alive in zip(layers, alive):
        layer_dead = int(layer_alive.size - np.count_nonzero(layer_alive))
        per_layer[layer.name] = layer_dead / layer_alive.size
        dead_units += layer_dead
        units += int(layer_alive.size)
    return {"dead_fraction": dead_units / units, "dead_units": dead_units, "units": units,
            "layers": per_layer}
