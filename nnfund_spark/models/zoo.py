"""Keras model builders by name. Every model takes raw pixel values (0..255) and normalizes
inside (its first layer), so a logged model scores images exactly as they are stored in the
prepared dataset.

``build_model(name, input_shape, num_classes, **kwargs)`` accepts, for every model, the common
options of ``models.blocks`` (activation, dropout, l1, l2, normalization, initializer, ...) plus
the model's own (``model_options(name)`` lists them all with their defaults). A keyword whose
value is None is dropped, so the model's own default applies: a config can leave a knob unset
without knowing each model's preferred value. Unknown names raise ValueError listing the valid
ones.
"""
from __future__ import annotations

import inspect
from typing import Callable

from nnfund_spark.models.blocks import COMMON_OPTIONS, LayerOptions
from nnfund_spark.models.classic import alexnet, convnet, lenet5, mlp, mnist_cnn
from nnfund_spark.models.deep import inception, vgg
from nnfund_spark.models.resnet import resnet

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
    builder = _builder(name)
    kwargs = {key: value for key, value in kwargs.items() if value is not None}
    accepted = model_options(name)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"model '{name}' does not accept {', '.join(unknown)}; accepted: "
                         f"{', '.join(accepted)}")
    return builder(input_shape, num_classes, **kwargs)


def _builder(name: str) -> Callable:
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}")
    return MODELS[name]
