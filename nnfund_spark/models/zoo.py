"""Keras model builders by name. Every model takes raw pixel values (0..255) and normalizes
inside (its first layer), so a logged model scores images exactly as they are stored in the
prepared dataset.

``build_model(name, input_shape, num_classes, **kwargs)`` accepts, for every model, the common
options of ``models.blocks`` (activation, dropout, l1, l2, normalization, initializer, ...) plus
the model's own (``model_options(name)`` lists them all with their defaults). A keyword whose
value is None is dropped, so the model's own default applies: a config can leave a knob unset
without knowing each model's preferred value. Unknown names raise ValueError listing the valid
ones.

``check_model(name, input_shape, num_classes, **kwargs)`` makes every check ``build_model``
makes (names, values, the image geometry) without TensorFlow, through the same ``check_*``
function the builder itself starts with: the driver runs it before any rank starts.
"""
from __future__ import annotations

import inspect
from typing import Callable

from nnfund_spark.models.blocks import COMMON_OPTIONS, LayerOptions, check_width_scaled_model
from nnfund_spark.models.classic import (alexnet, check_convnet, check_lenet5, check_mlp,
                                         check_mnist_cnn, convnet, lenet5, mlp, mnist_cnn)
from nnfund_spark.models.deep import check_vgg, inception, vgg
from nnfund_spark.models.resnet import check_resnet, resnet

MODELS: dict[str, Callable] = {
    "mlp": mlp,
    "lenet5": lenet5,
    "mnist_cnn": mnist_cnn,
    "convnet": convnet,
    "alexnet": alexnet,
    "vgg": vgg,
    "inception": inception,
    "resnet": resnet,
}

# Each builder's checks, called by the builder first; their parameters are the builder's own
# names (its **common as ``common``), so check_model can pass the builder's bound arguments.
CHECKS: dict[str, Callable] = {
    "mlp": check_mlp,
    "lenet5": check_lenet5,
    "mnist_cnn": check_mnist_cnn,
    "convnet": check_convnet,
    "alexnet": check_width_scaled_model,
    "vgg": check_vgg,
    "inception": check_width_scaled_model,
    "resnet": check_resnet,
}


def model_options(name: str) -> dict:
    """Every keyword ``build_model(name, ...)`` accepts, with the default it gets there."""
    builder = _builder(name)
    defaults = {key: getattr(LayerOptions(), key) for key in COMMON_OPTIONS
                if key in LayerOptions.__dataclass_fields__}
    for parameter in inspect.signature(builder).parameters.values():
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            defaults[parameter.name] = parameter.default
    return dict(sorted(defaults.items()))


def build_model(name: str, input_shape, num_classes: int, **kwargs):
    """Build model ``name`` for images of ``input_shape`` (H, W, C) and ``num_classes``."""
    return _builder(name)(input_shape, num_classes, **_known(name, kwargs))


def check_model(name: str, input_shape, num_classes: int, **kwargs) -> None:
    """Raise the ValueError ``build_model`` would raise for these arguments, without building
    anything (and without importing TensorFlow)."""
    bound = inspect.signature(_builder(name)).bind(input_shape, num_classes,
                                                   **_known(name, kwargs))
    bound.apply_defaults()
    CHECKS[name](**bound.arguments)


def _known(name: str, kwargs: dict) -> dict:
    """kwargs without the None values (the model's default applies), refusing unknown names."""
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    accepted = model_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model '{name}' does not accept {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted)}")
    return kwargs


def _builder(name: str) -> Callable:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]
