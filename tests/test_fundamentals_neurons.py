"""Activation functions, their plots, and the course's worked neuron examples (no Spark)."""
import numpy as np
import pytest
import tensorflow as tf

from nnfund_spark.fundamentals import neurons
from nnfund_spark.fundamentals.activations import (ACTIVATIONS, get_activation, reference,
                                                   resolve_parameters)
from nnfund_spark.tracking.plots import activation_curves_figure

# Points away from the kinks at 0, where one-sided derivatives differ by convention.
X = np.array([-3.0, -1.2, -0.3, 0.4, 1.1, 2.5])
SCALAR_CASES = [("step", {}), ("sigmoid", {}), ("tanh", {}), ("relu", {}),
                ("leaky_relu", {}), ("leaky_relu", {"alpha": 0.2}), ("elu", {}),
                ("elu", {"alpha": 0.5}), ("selu", {}), ("gelu", {}),
                ("gelu", {"approximate": True}), ("swish", {})]


@pytest.mark.parametrize("name, params", SCALAR_CASES)
def test_numpy_reference_matches_keras_value_and_gradient(name, params):
    function, derivative = reference(name, **params)
    layer = get_activation(name, **params)
    inputs = tf.constant(X, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
    # Keras layers compute in float32, hence float32-sized tolerances.
    np.testing.assert_allclose(outputs.numpy(), function(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tape.gradient(outputs, inputs).numpy(), derivative(X),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, params", [("relu", {}), ("leaky_relu", {"alpha": 0.2}),
                                          ("elu", {"alpha": 0.5}), ("selu", {})])
def test_reference_derivative_at_the_kink_is_tensorflows(name, params):
    _, derivative = reference(name, **params)
    inputs = tf.constant([0.0], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = get_activation(name, **params)(inputs)
    np.testing.assert_allclose(derivative(np.array([0.0])), tape.gradient(outputs, inputs).numpy(),
                               rtol=1e-5)


def test_reference_takes_plain_numbers():
    for name in ("step", "relu", "sigmoid", "leaky_relu"):
        function, derivative = reference(name)
        assert float(function(2.0)) == pytest.approx(float(function(np.array(2.0))))
        assert float(derivative(2.0)) == pytest.approx(float(derivative(np.array(2.0))))


def test_reference_shapes_of_the_classics():
    sigmoid, sigmoid_derivative = reference("sigmoid")
    assert sigmoid(np.array(0.0)) == 0.5 and sigmoid_derivative(np.array(0.0)) == 0.25
    step, step_derivative = reference("step")
    assert list(step(np.array([-1.0, 0.0, 1e-9]))) == [0.0, 0.0, 1.0]  # Heaviside, step(0) = 0
    assert not step_derivative(X).any()
    _, relu_derivative = reference("relu")
    assert list(relu_derivative(np.array([-1.0, 0.0, 2.0]))) == [0.0, 0.0, 1.0]


def test_step_trains_nothing_but_still_runs():
    # The step's gradient is zero, not missing: fitting runs and leaves the first layer alone.
    inputs = tf.keras.Input((3,))
    hidden = tf.keras.layers.Dense(4, name="hidden")(inputs)
    outputs = tf.keras.layers.Dense(2, activation="softmax")(get_activation("step")(hidden))
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    before = model.get_layer("hidden").get_weights()[0].copy()
    model.fit(np.random.RandomState(0).normal(size=(8, 3)), np.arange(8) % 2, verbose=0)
    np.testing.assert_array_equal(model.get_layer("hidden").get_weights()[0], before)


def test_maxout_takes_the_max_of_each_group_of_pieces():
    layer = get_activation("maxout", pieces=3)
    values = np.array([[1.0, 5.0, 2.0, -1.0, -4.0, -2.0]], np.float32)
    np.testing.assert_array_equal(layer(values).numpy(), [[5.0, -1.0]])
    images = np.arange(2 * 2 * 2 * 4, dtype=np.float32).reshape(2, 2, 2, 4)
    assert get_activation("maxout", pieces=2)(images).shape == (2, 2, 2, 2)
    with pytest.raises(ValueError, match="divisible by 3, got 4"):
        get_activation("maxout", pieces=3)(images)
    function, _ = reference("maxout", pieces=2)
    np.testing.assert_allclose(function(np.array([-2.0, 3.0])), [1.0, 3.0])  # max(x, -x/2)


def test_every_activation_builds_and_bad_input_is_named():
    for name in ACTIVATIONS:
        assert get_activation(name) is not get_activation(name)  # a fresh layer per use
    with pytest.raises(ValueError, match="unknown activation 'softplus'; available: step, "
                                         "sigmoid, tanh, relu, leaky_relu, elu, selu, gelu"):
        get_activation("softplus")
    with pytest.raises(ValueError, match="activation 'relu' does not accept alpha; accepted: "
                                         "no parameters"):
        get_activation("relu", alpha=0.1)
    with pytest.raises(ValueError, match="'leaky_relu' does not accept slope; accepted: alpha"):
        resolve_parameters("leaky_relu", {"slope": 0.1})
    with pytest.raises(ValueError, match="pieces must be an integer >= 1, got 0"):
        get_activation("maxout", pieces=0)


def test_activation_curves_figure_draws_each_function_and_derivative(tmp_path):
    from matplotlib.figure import Figure
    figure = activation_curves_figure(params={"leaky_relu": {"alpha": 0.1}})
    assert isinstance(figure, Figure)
    assert len(figure.axes) == len(ACTIVATIONS)
    assert [axes.get_title() for axes in figure.axes][:5] == [
        "step", "sigmoid", "tanh", "relu", "leaky_relu(alpha=0.1)"]
    sigmoid_lines = figure.axes[1].get_lines()[-2:]
    x, y = sigmoid_lines[1].get_data()
    assert y[np.argmin(np.abs(x))] == pytest.approx(0.25)  # σ'(0)
    figure.savefig(tmp_path / "activations.png")  # what mlflow.log_figure does
    assert (tmp_path / "activations.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="unknown activation 'sigmod'"):
        activation_curves_figure(["relu", "sigmod"])
    with pytest.raises(ValueError, match="params given for elu, which are not plotted"):
        activation_curves_figure(["relu"], params={"elu": {"alpha": 2.0}})


# --- the worked examples -----------------------------------------------------------------------

def test_snowboard_perceptron():
    assert neurons.SNOWBOARD_WEIGHTS == (6.0, 2.0, 2.0) and neurons.SNOWBOARD_THRESHOLD == 5.0
    assert neurons.snowboard_decision(True, False, False)       # 6 > 5: the weather decides
    assert not neurons.snowboard_decision(False, True, True)    # 4 <= 5
    assert neurons.snowboard_decision(True, True, True)
    table = dict(neurons.snowboard_truth_table())
    assert sum(table.values()) == 4 and all(table[key] == key[0] for key in table)
    # Threshold 3: good weather, or friend and transport together.
    lowered = dict(neurons.snowboard_truth_table(threshold=3))
    assert lowered[(False, True, True)] and not lowered[(False, True, False)]
    assert neurons.perceptron([1, 0, 1], [6, 2, 2], bias=-5) == 1
    with pytest.raises(ValueError, match="3 inputs but 2 weights"):
        neurons.perceptron([1, 0, 1], [6, 2], bias=-5)


def test_two_layer_sigmoid_network_reproduces_the_worked_numbers():
    keras_result = neurons.two_layer_forward()
    by_hand = neurons.two_layer_forward_by_hand()
    np.testing.assert_allclose(np.round(keras_result["hidden"], 2), [0.80, 0.75, 0.69])
    assert round(float(keras_result["output"][0]), 2) == 0.75
    np.testing.assert_allclose(keras_result["hidden"], by_hand["hidden"], rtol=1e-6)
    np.testing.assert_allclose(keras_result["output"], by_hand["output"], rtol=1e-6)
    model = neurons.two_layer_sigmoid_model()
    assert model.count_params() == 2 * 3 + 3  # no biases
