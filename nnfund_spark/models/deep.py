"""Deeper convnets of the course, sized for 28-32 px images: VGG and a small GoogLeNet.

Common options: ``models.blocks`` docstring.
"""
from __future__ import annotations

from nnfund_spark.models.blocks import (LayerOptions, check_image_model, check_width,
                                        check_width_scaled_model, dropout as dropout_layer,
                                        scaled)

# Convs per block for each VGG depth (Simonyan & Zisserman 2015, table 1, configurations A, B,
# D, E): depth counts weight layers, i.e. these convs plus the three dense layers.
VGG_BLOCKS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3),
              19: (2, 2, 4, 4, 4)}
# Half the paper's widths (64, 128, 256, 512, 512) and 256-unit instead of 4096-unit dense
# layers: a 32 px image has 1/49 of ImageNet's 224 px area, and width=2.0 restores the paper's
# conv widths when wanted.
VGG_WIDTHS = (32, 64, 128, 256, 256)
VGG_DENSE = 256


def check_vgg(input_shape, num_classes, depth, width, dropout, dense_dropout, common):
    """vgg's checks, without TensorFlow: (shape, LayerOptions, width)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth not in VGG_BLOCKS:
        raise ValueError(f"unknown vgg depth {depth!r}; available: "
                         f"{', '.join(str(key) for key in VGG_BLOCKS)}")
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common)
    return shape, options, check_width(width)


def vgg(input_shape, num_classes, *, depth: int = 16, width: float = 1.0, dropout: float = 0.0,
        dense_dropout: float = 0.5, **common):
    """VGG-``depth`` (11, 13, 16 or 19): stacks of 3x3 'same' convs, a 2x2 max-pool after each
    of the five blocks, then two dense layers with dropout (0.5 in the paper) and the output.

    Pools are 'same'-padded so 28 px inputs survive five halvings (28 → 14 → 7 → 4 → 2 → 1).
    ``dropout`` acts after each pool. VGG-16 at width 1: 3,814,314 parameters on 32x32x3 with
    10 classes (the ImageNet original has 138M).
    """
    shape, options, width = check_vgg(input_shape, num_classes, depth, width, dropout,
                                      dense_dropout, common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    for block, (convs, filters) in enumerate(zip(VGG_BLOCKS[depth], VGG_WIDTHS), start=1):
        for index in range(1, convs + 1):
            x = options.conv(x, scaled(width, filters), 3, name=f"block{block}_conv{index}")
        x = layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
        x = dropout_layer(x, dropout, f"block{block}_dropout")
    x = layers.Flatten(name="flatten")(x)
    for index in (1, 2):
        x = options.dense(x, scaled(width, VGG_DENSE), name=f"fc{index}")
        x = dropout_layer(x, dense_dropout, f"fc{index}_dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name=f"vgg{depth}")


# GoogLeNet's inception modules (Szegedy et al. 2015, table 1) as
# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection); "pool" marks a 3x3/2 max-pool.
INCEPTION_PLAN = (
    ("3a", (64, 96, 128, 16, 32, 32)),
    ("3b", (128, 128, 192, 32, 96, 64)),
    ("pool", None),
    ("4a", (192, 96, 208, 16, 48, 64)),
    ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("pool", None),
    ("5a", (256, 160, 320, 32, 128, 128)),
    ("5b", (384, 192, 384, 48, 128, 128)),
)
INCEPTION_STEM = 192


def inception_module(options: LayerOptions, x, widths, name: str):
    """Four parallel branches concatenated on channels: 1x1; 1x1 → 3x3; 1x1 → 5x5;
    3x3 max-pool → 1x1. The 1x1 reductions are what keep the 3x3/5x5 convs affordable."""
    import tensorflow as tf
    ones, reduce3, threes, reduce5, fives, projection = widths
    branch1 = options.conv(x, ones, 1, name=f"{name}_1x1")
    branch3 = options.conv(x, reduce3, 1, name=f"{name}_3x3_reduce")
    branch3 = options.conv(branch3, threes, 3, name=f"{name}_3x3")
    branch5 = options.conv(x, reduce5, 1, name=f"{name}_5x5_reduce")
    branch5 = options.conv(branch5, fives, 5, name=f"{name}_5x5")
    pooled = tf.keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    pooled = options.conv(pooled, projection, 1, name=f"{name}_pool_proj")
    return tf.keras.layers.Concatenate(name=f"{name}_concat")([branch1, branch3, branch5, pooled])


def inception(input_shape, num_classes, *, width: float = 0.25, dropout: float = 0.0,
              dense_dropout: float = 0.4, **common):
    """A small GoogLeNet: GoogLeNet's nine inception modules (3a-5b, with its max-pools after
    3b and 4e) on a 3x3 conv stem instead of the ImageNet stem, then global average pooling,
    dropout (0.4 in the paper) and the softmax output. The two auxiliary classifiers are left
    out (they were a training aid for the 22-layer net on ImageNet).

    ``width`` scales every branch; the default quarter width gives 32 → 32 → 16 → 8 px and
    370,790 parameters on 32x32x3 with 10 classes (width 1.0 is the paper's module widths:
    5,864,762 parameters here). ``dropout`` acts after each max-pool.
    """
    shape, options, width = check_width_scaled_model(input_shape, num_classes, width, dropout,
                                                     dense_dropout, common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    x = options.conv(x, scaled(width, INCEPTION_STEM), 3, name="stem")
    pools = 0
    for name, widths in INCEPTION_PLAN:
        if widths is None:
            pools += 1
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{pools}")(x)
            x = dropout_layer(x, dropout, f"pool{pools}_dropout")
        else:
            x = inception_module(options, x, [scaled(width, value) for value in widths],
                                 f"inception{name}")
    x = layers.GlobalAveragePooling2D(name="global_pool")(x)
    x = dropout_layer(x, dense_dropout, "dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="inception")
