import math

import numpy as np
import pytest

from nnfund_spark.models import MODELS, build_model
from nnfund_spark.training.worker import cosine_lr


def test_mnist_cnn_matches_the_series_architecture():
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    assert model.count_params() == 1_199_882
    conv = [l for l in model.layers if l.__class__.__name__ == "Conv2D"]
    assert [l.filters for l in conv] == [32, 64]
    assert model.get_layer("dense").units == 128
    out = model(np.zeros((3, 28, 28, 1), np.float32))
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out.numpy().sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name, params", [("mlp", 1_796_010), ("lenet5", 61_706)])
def test_other_models_parameter_counts(name, params):
    assert build_model(name, (28, 28, 1), 10).count_params() == params


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg99'; available: " + ", ".join(sorted(MODELS))):
        build_model("vgg99", (28, 28, 1), 10)


def test_warmup_then_cosine_schedule():
    peak, total, warm = 0.002, 1000, 100
    assert cosine_lr(0, peak, total, warm, 0.05) == pytest.approx(peak * 0.1)
    assert cosine_lr(50, peak, total, warm, 0.05) == pytest.approx(peak * 0.55)
    assert cosine_lr(100, peak, total, warm, 0.05) == pytest.approx(peak)
    assert cosine_lr(550, peak, total, warm, 0.05) == pytest.approx(peak * (0.05 + 0.95 * 0.5))
    assert cosine_lr(1000, peak, total, warm, 0.05) == pytest.approx(peak * 0.05)
    assert cosine_lr(700, peak, total, 0, 1.0) == peak
    values = [cosine_lr(s, peak, total, warm, 0.05) for s in range(total)]
    assert all(b <= a + 1e-12 for a, b in zip(values[warm:], values[warm + 1:]))
    assert not any(math.isnan(v) for v in values)
