import numpy as np
import pytest

from nnfund_spark.models import MODELS, build_model


def test_mnist_cnn_matches_the_series_architecture():
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    assert model.count_params() == 1_199_882
    conv = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    assert [l.filters for l in conv] == [32, 64]
    assert model.get_layer("dense").units == 128
    out = model(np.zeros((3, 28, 28, 1), np.float32))
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_mixed_precision_keeps_the_softmax_in_float32():
    import tensorflow as tf

    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("mnist_cnn", (28, 28, 1), 10)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("dense").compute_dtype == "float16"  # the body computes in fp16
    assert model.get_layer("probabilities").compute_dtype == "float32"
    assert model.output.dtype == tf.float32
    # the same weights in a float32 model give the same probabilities to fp16 precision
    plain = build_model("mnist_cnn", (28, 28, 1), 10)
    plain.set_weights(model.get_weights())
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(model(images).numpy(), plain(images).numpy(), atol=2e-3)


@pytest.mark.parametrize("name, params", [("mlp", 1_796_010), ("lenet5", 61_706)])
def test_other_models_parameter_counts(name, params):
    assert build_model(name, (28, 28, 1), 10).count_params() == params


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg99'; available: " + ", ".join(sorted(MODELS))):
        build_model("vgg99", (28, 28, 1), 10)
