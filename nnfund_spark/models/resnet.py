"""CIFAR-style ResNet (He et al. 2016, "Deep Residual Learning", §4.2): ResNet-20/32/44/56/110.

depth = 6n + 2: a 3x3 conv with 16 filters, three stages of n basic blocks with 16, 32 and 64
filters (the first block of stages 2 and 3 halves the resolution with stride 2), global average
pooling and the softmax output. A basic block is conv3x3 → norm → act → conv3x3 → norm, plus the
shortcut, then act.

Shortcuts are identities; where a block changes shape (stride 2, doubled channels) the
``shortcut`` option decides, as in the paper:

- ``"A"`` (default, what the paper used on CIFAR): subsample by taking every second pixel and
  pad the extra channels with zeros; parameter-free, so ResNet-20 has the paper's ≈ 0.27M;
- ``"B"``: a 1x1 stride-2 convolution (+ normalization) projects the input to the new shape.

Defaults follow the paper: batch normalization and He-normal initialization. The paper's
weight decay 1e-4 corresponds to ``l2=5e-5`` here (Keras adds l2·Σw² to the loss, whose
gradient is 2·l2·w). Maxout is refused: it divides the channel count, which an identity
shortcut cannot follow.
"""
from __future__ import annotations

from nnfund_spark.models.blocks import (LayerOptions, check_image_model, check_width,
                                        dropout as dropout_layer, scaled)

SHORTCUTS = ("A", "B")
STAGE_WIDTHS = (16, 32, 64)


def zero_pad_shortcut(channels: int, stride: int = 2, name: str | None = None):
    """An option-A shortcut layer: ``stride``-subsampled input, zero channels up to ``channels``."""
    from nnfund_spark.models.custom_objects import ZeroPadShortcut
    return ZeroPadShortcut(channels, stride, name=name)


def basic_block(options: LayerOptions, x, filters: int, stride: int, shortcut: str, name: str):
    import tensorflow as tf
    residual = options.conv(x, filters, 3, strides=stride, name=f"{name}_conv1")
    residual = options.conv(residual, filters, 3, name=f"{name}_conv2", activate=False)
    if stride != 1 or x.shape[-1] != filters:
        if shortcut == "A":
            x = zero_pad_shortcut(filters, stride, name=f"{name}_shortcut")(x)
        else:
            x = options.conv(x, filters, 1, strides=stride, name=f"{name}_shortcut",
                             activate=False)
    x = tf.keras.layers.Add(name=f"{name}_add")([x, residual])
    return options.activate(x, f"{name}_out")


def check_resnet(input_shape, num_classes, depth, width, shortcut, dropout, dense_dropout,
                 normalization, initializer, common):
    """resnet's checks, without TensorFlow: (shape, LayerOptions, width)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), "
                         f"got {depth!r}")
    if shortcut not in SHORTCUTS:
        raise ValueError(f"unknown resnet shortcut '{shortcut}'; available: "
                         f"{', '.join(SHORTCUTS)} (A = zero-padding identity, B = 1x1 projection)")
    if common.get("activation") == "maxout":
        raise ValueError("resnet cannot use activation 'maxout': it divides the channel count, "
                         "which identity shortcuts cannot follow; choose another activation")
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout,
                                       dict(common, normalization=normalization,
                                            initializer=initializer))
    return shape, options, check_width(width)


def resnet(input_shape, num_classes, *, depth: int = 20, width: float = 1.0,
           shortcut: str = "A", dropout: float = 0.0, dense_dropout: float = 0.0,
           normalization: str = "batch", initializer: str = "he_normal", **common):
    """ResNet-``depth`` for small images (depth = 6n + 2 >= 8, e.g. 20, 32, 44, 56, 110).

    ``width`` multiplies the stage widths 16/32/64. ``dropout`` acts after each stage,
    ``dense_dropout`` before the output (the paper uses neither). Parameters on 32x32x3 with
    10 classes, shortcut A, batch norm (Keras counts the BN moving mean/variance too):
    ResNet-20 271,098 (paper: 0.27M), ResNet-32 466,426 (0.46M), ResNet-56 857,082
    (0.85M), ResNet-110 1,736,058 (1.7M). Convs before a normalization have no bias.
    """
    shape, options, width = check_resnet(input_shape, num_classes, depth, width, shortcut,
                                         dropout, dense_dropout, normalization, initializer,
                                         common)
    import tensorflow as tf

    inputs, x = options.inputs(shape)
    blocks_per_stage = (depth - 2) // 6
    x = options.conv(x, scaled(width, STAGE_WIDTHS[0]), 3, name="stem")
    for stage, stage_width in enumerate(STAGE_WIDTHS, start=1):
        for block in range(1, blocks_per_stage + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = basic_block(options, x, scaled(width, stage_width), stride, shortcut,
                            name=f"stage{stage}_block{block}")
        x = dropout_layer(x, dropout, f"stage{stage}_dropout")
    x = tf.keras.layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = dropout_layer(x, dense_dropout, "dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name=f"resnet{depth}")
