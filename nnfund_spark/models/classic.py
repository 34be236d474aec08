"""The early architectures of the course: MLP, LeNet-5, the series' MNIST CNN and AlexNet.

All take raw 0..255 pixels (the first layer normalizes, see ``blocks``) and end in a softmax
layer named ``probabilities``. Common options: ``models.blocks`` docstring.
"""
from __future__ import annotations

from typing import Sequence

from nnfund_spark.models.blocks import (check_image_model, check_positive_integers, check_rate,
                                        check_width_scaled_model, dropout as dropout_layer,
                                        scaled, valid_size)


def check_mlp(input_shape, num_classes, units, dropout, dense_dropout, input_dropout, common):
    """mlp's checks, without TensorFlow: (shape, LayerOptions, units)."""
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common,
                                       needs_image=False)
    check_rate("input_dropout", input_dropout)
    return shape, options, check_positive_integers("units", units, allow_empty=True)


def mlp(input_shape, num_classes, *, units: Sequence[int] = (1000, 1000), dropout: float = 0.0,
        dense_dropout: float = 0.5, input_dropout: float = 0.0, **common):
    """Fully connected net: flatten → [dense → dropout] per entry of ``units`` → softmax.

    The default is the Adam paper's MNIST MLP (Kingma & Ba 2015, §6.2: two hidden layers of
    1000 ReLU units with dropout): 1,796,010 parameters on 28x28x1 / 10 classes.
    ``input_dropout`` drops input pixels (Hinton et al. 2012 used 0.2); ``dropout`` has no conv
    layer to act on here and is accepted only so every model takes the same options.
    """
    shape, options, units = check_mlp(input_shape, num_classes, units, dropout, dense_dropout,
                                      input_dropout, common)
    import tensorflow as tf

    inputs, x = options.inputs(shape)
    x = tf.keras.layers.Flatten(name="flatten")(x)
    x = dropout_layer(x, input_dropout, "input_dropout")
    for index, width in enumerate(units, start=1):
        x = options.dense(x, width, name=f"dense{index}")
        x = dropout_layer(x, dense_dropout, f"dropout{index}")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="mlp")


def check_lenet5(input_shape, num_classes, dropout, dense_dropout, common):
    """lenet5's checks, without TensorFlow: (shape, LayerOptions, C1's padding)."""
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common)
    padding = "same" if min(shape[:2]) < 32 else "valid"
    for size in shape[:2]:
        c1 = size if padding == "same" else valid_size(size, 5)
        if valid_size(valid_size(valid_size(c1, 2, 2), 5), 2, 2) < 1:
            raise ValueError(f"lenet5 does not fit {shape[0]}x{shape[1]} images: C3's 5x5 "
                             f"conv and S4's pool need at least 12x12 (below 32 px C1 keeps "
                             f"the size); use mlp, mnist_cnn or convnet for smaller images")
    return shape, options, padding


def lenet5(input_shape, num_classes, *, dropout: float = 0.0, dense_dropout: float = 0.0,
           **common):
    """LeNet-5 (LeCun et al. 1998) with max-pooling and, by default, ReLU instead of the
    paper's scaled tanh and trainable subsampling (``activation="tanh"`` is closer to it).

    C1 gets 'same' padding on inputs smaller than 32x32, so 28x28 MNIST follows the paper's
    32x32 geometry (28x28x6 → 14 → 10x10x16 → 5); 32x32 inputs use the paper's valid padding.
    61,706 parameters on 28x28x1 and 62,006 on 32x32x3 (C1 sees 3 channels), 10 classes.
    ``dropout`` acts after each pooling layer, ``dense_dropout`` before the output.
    """
    shape, options, padding = check_lenet5(input_shape, num_classes, dropout, dense_dropout,
                                           common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    x = options.conv(x, 6, 5, name="c1", padding=padding)
    x = dropout_layer(layers.MaxPooling2D(2, name="s2")(x), dropout, "s2_dropout")
    x = options.conv(x, 16, 5, name="c3", padding="valid")
    x = dropout_layer(layers.MaxPooling2D(2, name="s4")(x), dropout, "s4_dropout")
    x = layers.Flatten(name="flatten")(x)
    x = options.dense(x, 120, name="c5")
    x = options.dense(x, 84, name="f6")
    x = dropout_layer(x, dense_dropout, "dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="lenet5")


def check_mnist_cnn(input_shape, num_classes, dropout, dense_dropout, common):
    """mnist_cnn's checks, without TensorFlow: (shape, LayerOptions)."""
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common)
    if min(shape[:2]) < 6:
        raise ValueError(f"mnist_cnn does not fit {shape[0]}x{shape[1]} images: two 3x3 valid "
                         f"convs and a 2x2 pool need at least 6x6")
    return shape, options


def mnist_cnn(input_shape, num_classes, *, dropout: float = 0.25, dense_dropout: float = 0.5,
              **common):
    """The series' MNIST CNN: conv 32 → conv 64 → max-pool → dropout → dense 128 → dropout.

    1,199,882 parameters on 28x28x1 with 10 classes (with the default options; layer names
    conv1, conv2, pool, dropout1, flatten, dense, dropout2, probabilities).
    """
    shape, options = check_mnist_cnn(input_shape, num_classes, dropout, dense_dropout, common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    x = options.conv(x, 32, 3, name="conv1", padding="valid")
    x = options.conv(x, 64, 3, name="conv2", padding="valid")
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = dropout_layer(x, dropout, "dropout1")
    x = layers.Flatten(name="flatten")(x)
    x = options.dense(x, 128, name="dense")
    x = dropout_layer(x, dense_dropout, "dropout2")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="mnist_cnn")


def check_convnet(input_shape, num_classes, filters, dense_units, dropout, dense_dropout,
                  common):
    """convnet's checks, without TensorFlow: (shape, LayerOptions, filters)."""
    shape, options = check_image_model(input_shape, num_classes, dropout, dense_dropout, common)
    filters = check_positive_integers("filters", filters)
    if isinstance(dense_units, bool) or not isinstance(dense_units, int) or dense_units < 0:
        raise ValueError(f"dense_units must be an integer >= 0 (0 = no hidden dense layer), "
                         f"got {dense_units!r}")
    height, width = shape[:2]
    for index in range(1, len(filters) + 1):
        if min(height, width) < 4:
            raise ValueError(f"convnet: {len(filters)} conv/pool stages do not fit "
                             f"{shape} images (stage {index} would see {height}x{width}); use "
                             f"fewer filters entries")
        height, width = (valid_size(valid_size(size, 3), 2, 2) for size in (height, width))
    return shape, options, filters


def convnet(input_shape, num_classes, *, filters: Sequence[int] = (32, 64),
            dense_units: int = 0, dropout: float = 0.0, dense_dropout: float = 0.5, **common):
    """The small convnet of the Keras MNIST example: per entry of ``filters`` a 3x3 valid conv
    and a 2x2 max-pool, then flatten → [dense ``dense_units``] → dropout → softmax.

    The defaults are that example exactly (conv 32 → pool → conv 64 → pool → dropout 0.5 →
    dense 10): 34,826 parameters on 28x28x1. ``dense_units=128`` adds the hidden layer of
    the time-to-accuracy preset (conf/mnist_fast.yaml): 225,034 parameters, a few per cent
    more compute, and 99 % MNIST test accuracy in three epochs instead of nine.
    ``dropout`` acts after each pool, ``dense_dropout`` before the output layer.
    """
    shape, options, filters = check_convnet(input_shape, num_classes, filters, dense_units,
                                            dropout, dense_dropout, common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    for index, width in enumerate(filters, start=1):
        x = options.conv(x, width, 3, name=f"conv{index}", padding="valid")
        x = dropout_layer(layers.MaxPooling2D(2, name=f"pool{index}")(x), dropout,
                          f"pool{index}_dropout")
    x = layers.Flatten(name="flatten")(x)
    if dense_units:
        x = options.dense(x, dense_units, name="dense")
    x = dropout_layer(x, dense_dropout, "dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="convnet")


# AlexNet's conv widths (96, 256, 384, 384, 256) and 4096-unit dense layers, cut for 28-32 px
# images the way most CIFAR reproductions do: the first conv is 5x5 stride 1 (not 11x11 stride 4,
# which would leave a 32 px image 7 px wide after one layer), widths (64, 192, 384, 256, 256) as
# in torchvision's AlexNet, dense 1024 instead of 4096. Local response normalization is left out
# (later work found it adds little); ``normalization="batch"`` is the modern stand-in.
ALEXNET_CONV = ((64, 5), (192, 5), (384, 3), (256, 3), (256, 3))
ALEXNET_DENSE = (1024, 1024)


def alexnet(input_shape, num_classes, *, width: float = 1.0, dropout: float = 0.0,
            dense_dropout: float = 0.5, **common):
    """Small-image AlexNet: five convs, overlapping 3x3/2 max-pools after conv 1, 2 and 5
    (Krizhevsky et al. 2012), two dense layers with dropout 0.5 as in the paper.

    ``width`` multiplies every conv and dense width. 'same'-padded pools take 32 → 16 → 8 → 4
    and 28 → 14 → 7 → 4. ``dropout`` acts after each pool. 7,706,442 parameters on 32x32x3 with
    10 classes (7,703,242 on 28x28x1), versus ≈ 61M for the ImageNet original.
    """
    shape, options, width = check_width_scaled_model(input_shape, num_classes, width, dropout,
                                                     dense_dropout, common)
    import tensorflow as tf

    layers = tf.keras.layers
    inputs, x = options.inputs(shape)
    for index, (filters, kernel) in enumerate(ALEXNET_CONV, start=1):
        x = options.conv(x, scaled(width, filters), kernel, name=f"conv{index}")
        if index in (1, 2, 5):
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{index}")(x)
            x = dropout_layer(x, dropout, f"pool{index}_dropout")
    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(ALEXNET_DENSE, start=6):
        x = options.dense(x, scaled(width, units), name=f"fc{index}")
        x = dropout_layer(x, dense_dropout, f"fc{index}_dropout")
    return tf.keras.Model(inputs, options.classifier(x, num_classes), name="alexnet")
