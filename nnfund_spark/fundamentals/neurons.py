"""The course's worked examples of single neurons and a tiny network, as checkable functions.

1. The perceptron that decides "do I go snowboarding this weekend?" from three yes/no inputs
   (the shape of Nielsen's classic example in *Neural Networks and Deep Learning*, ch. 1):

   ========================  ======  =============================================
   input (1 = yes)           weight  why
   ========================  ======  =============================================
   the weather is good       6       it matters most: alone it clears the threshold
   a friend comes along      2       nice, but not enough on its own
   near public transport     2       likewise
   ========================  ======  =============================================

   Threshold 5, i.e. bias −5: go (1) when 6·weather + 2·friend + 2·transport > 5. So good
   weather alone decides it (6 > 5), while friend and transport together (4) do not. Lowering
   the threshold to 3 makes the perceptron go whenever the weather is good *or* both others hold.

2. A 2-3-1 sigmoid network with no biases, evaluated on the input (1, 1). The weights below were
   chosen (solved for, they are not from a paper) so that the hidden units come out 0.80, 0.75,
   0.69 and the output 0.75, the figures the course works through by hand:

   - hidden pre-activations: 0.8·1 + 0.6·1 = 1.4, 0.4·1 + 0.7·1 = 1.1, 0.3·1 + 0.5·1 = 0.8
   - hidden outputs σ(1.4), σ(1.1), σ(0.8) = 0.8022, 0.7503, 0.6900
   - output pre-activation 0.3·0.8022 + 0.5·0.7503 + 0.7·0.6900 = 1.0988, σ(1.0988) = 0.7500

   It is built as a real Keras model with those weights set, so the hand calculation and the
   framework can be compared number for number.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SNOWBOARD_INPUTS = ("weather_good", "friend_comes", "near_public_transport")
SNOWBOARD_WEIGHTS = (6.0, 2.0, 2.0)
SNOWBOARD_THRESHOLD = 5.0

# Rows are inputs, columns hidden units: the layout of a Keras Dense kernel.
TWO_LAYER_INPUTS = (1.0, 1.0)
TWO_LAYER_HIDDEN_WEIGHTS = ((0.8, 0.4, 0.3),
                            (0.6, 0.7, 0.5))
TWO_LAYER_OUTPUT_WEIGHTS = (0.3, 0.5, 0.7)


def perceptron(inputs: Sequence[float], weights: Sequence[float], bias: float) -> int:
    """Rosenblatt's perceptron: 1 if w·x + b > 0 else 0 (bias = −threshold)."""
    if len(inputs) != len(weights):
        raise ValueError(f"perceptron got {len(inputs)} inputs but {len(weights)} weights")
    return int(float(np.dot(inputs, weights)) + bias > 0)


def snowboard_decision(weather_good: bool, friend_comes: bool, near_public_transport: bool,
                       threshold: float = SNOWBOARD_THRESHOLD) -> bool:
    """Go snowboarding this weekend? The course's perceptron with weights 6, 2, 2."""
    inputs = [float(weather_good), float(friend_comes), float(near_public_transport)]
    return bool(perceptron(inputs, SNOWBOARD_WEIGHTS, bias=-threshold))


def snowboard_truth_table(threshold: float = SNOWBOARD_THRESHOLD) -> list[tuple[tuple, bool]]:
    """All eight input combinations with the decision, for printing in a notebook."""
    rows = []
    for code in range(8):
        inputs = tuple(bool(code >> bit & 1) for bit in (2, 1, 0))
        rows.append((inputs, snowboard_decision(*inputs, threshold=threshold)))
    return rows


def two_layer_sigmoid_model(hidden_weights=TWO_LAYER_HIDDEN_WEIGHTS,
                            output_weights=TWO_LAYER_OUTPUT_WEIGHTS):
    """A Keras 2-3-1 sigmoid network (no biases) with the given weights set.

    The model has two outputs, ``hidden`` and ``output``, so the hidden activations of the
    worked example can be read off as well as the final one.
    """
    import tensorflow as tf

    hidden_kernel = np.asarray(hidden_weights, dtype=np.float32)
    output_kernel = np.asarray(output_weights, dtype=np.float32).reshape(-1, 1)
    if hidden_kernel.ndim != 2 or hidden_kernel.shape[1] != output_kernel.shape[0]:
        raise ValueError(f"hidden weights of shape {hidden_kernel.shape} do not match "
                         f"{output_kernel.shape[0]} output weights")
    inputs = tf.keras.Input(shape=(hidden_kernel.shape[0],), name="inputs")
    hidden_layer = tf.keras.layers.Dense(hidden_kernel.shape[1], activation="sigmoid",
                                         use_bias=False, name="hidden")
    output_layer = tf.keras.layers.Dense(1, activation="sigmoid", use_bias=False, name="output")
    hidden = hidden_layer(inputs)
    output = output_layer(hidden)
    hidden_layer.set_weights([hidden_kernel])
    output_layer.set_weights([output_kernel])
    return tf.keras.Model(inputs, {"hidden": hidden, "output": output}, name="two_layer_sigmoid")


def two_layer_forward(inputs: Sequence[float] = TWO_LAYER_INPUTS) -> dict[str, np.ndarray]:
    """Run the worked example through the Keras model: {'hidden': (3,), 'output': (1,)}."""
    model = two_layer_sigmoid_model()
    result = model(np.asarray([inputs], dtype=np.float32))
    return {key: value.numpy()[0] for key, value in result.items()}


def two_layer_forward_by_hand(inputs: Sequence[float] = TWO_LAYER_INPUTS) -> dict[str, np.ndarray]:
    """The same computation in plain numpy, the way it is done on the whiteboard."""
    hidden = 1.0 / (1.0 + np.exp(-np.dot(inputs, TWO_LAYER_HIDDEN_WEIGHTS)))
    output = 1.0 / (1.0 + np.exp(-np.dot(hidden, TWO_LAYER_OUTPUT_WEIGHTS)))
    return {"hidden": hidden, "output": np.atleast_1d(output)}
