"""The model zoo and the conv arithmetic behind it (no Spark needed)."""
import numpy as np
import pytest
import tensorflow as tf

from nnfund_spark.models import MODELS, build_model
from nnfund_spark.models.conv_arithmetic import (conv_output_size, conv_params, pool_output_size,
                                                 same_padding)
from nnfund_spark.models.zoo import model_options

def conv(k, channels_in, channels_out):
    """Weights and biases of a k x k conv (or a dense layer with k = 1): (k·k·D + 1)·K."""
    return k * k * channels_in * channels_out + channels_out


def inception_count(channels: int, width: float = 0.25) -> int:
    """The small GoogLeNet counted from the paper's module table (GoogLeNet table 1)."""
    from nnfund_spark.models.deep import INCEPTION_PLAN, INCEPTION_STEM

    def scaled(value):
        return max(1, int(round(value * width)))
    total, depth = conv(3, channels, scaled(INCEPTION_STEM)), scaled(INCEPTION_STEM)
    for _, widths in INCEPTION_PLAN:
        if widths is None:
            continue  # a max-pool: no parameters
        ones, reduce3, threes, reduce5, fives, projection = (scaled(v) for v in widths)
        total += (conv(1, depth, ones) + conv(1, depth, reduce3) + conv(3, reduce3, threes)
                  + conv(1, depth, reduce5) + conv(5, reduce5, fives)
                  + conv(1, depth, projection))
        depth = ones + threes + fives + projection
    return total + conv(1, depth, 10)


# Reference configurations (defaults, 10 classes), counted by hand from each architecture
# (layer by layer, flatten sizes from the pooling arithmetic). Where a published figure exists
# it is noted; the CIFAR ResNets (He et al. 2016: 0.27M / 0.46M / 0.85M / 1.7M) are counted
# in test_resnet20_hand_count_and_projection_shortcut and checked against the paper below.
VGG16_HALF = (conv(3, 32, 32) + conv(3, 32, 64) + conv(3, 64, 64) + conv(3, 64, 128)
              + 2 * conv(3, 128, 128) + conv(3, 128, 256) + 2 * conv(3, 256, 256)
              + 3 * conv(3, 256, 256) + conv(1, 256, 256) + conv(1, 256, 256) + conv(1, 256, 10))
ALEXNET_BODY = (conv(5, 64, 192) + conv(3, 192, 384) + conv(3, 384, 256) + conv(3, 256, 256)
                + conv(1, 4 * 4 * 256, 1024) + conv(1, 1024, 1024) + conv(1, 1024, 10))
REFERENCE_COUNTS = {
    # Adam paper MNIST MLP: 784-1000-1000-10
    ("mlp", (28, 28, 1)): conv(1, 784, 1000) + conv(1, 1000, 1000) + conv(1, 1000, 10),
    ("mlp", (32, 32, 3)): conv(1, 3072, 1000) + conv(1, 1000, 1000) + conv(1, 1000, 10),
    # LeCun et al. 1998 quote ~60k: C1 6@5x5, C3 16@5x5 on 5x5x16 = 400, C5 120, F6 84
    ("lenet5", (28, 28, 1)): (conv(5, 1, 6) + conv(5, 6, 16) + conv(1, 400, 120)
                              + conv(1, 120, 84) + conv(1, 84, 10)),
    ("lenet5", (32, 32, 3)): (conv(5, 3, 6) + conv(5, 6, 16) + conv(1, 400, 120)
                              + conv(1, 120, 84) + conv(1, 84, 10)),
    # the series' 1,199,882: two 3x3 convs, 2x2 pool of 24x24x64 = 9216, dense 128
    ("mnist_cnn", (28, 28, 1)): (conv(3, 1, 32) + conv(3, 32, 64) + conv(1, 12 * 12 * 64, 128)
                                 + conv(1, 128, 10)),
    ("mnist_cnn", (32, 32, 3)): (conv(3, 3, 32) + conv(3, 32, 64) + conv(1, 14 * 14 * 64, 128)
                                 + conv(1, 128, 10)),
    # the Keras MNIST example: 28 -> 26 -> 13 -> 11 -> 5 (32 -> 30 -> 15 -> 13 -> 6)
    ("convnet", (28, 28, 1)): conv(3, 1, 32) + conv(3, 32, 64) + conv(1, 5 * 5 * 64, 10),
    ("convnet", (32, 32, 3)): conv(3, 3, 32) + conv(3, 32, 64) + conv(1, 6 * 6 * 64, 10),
    # 'same' pools after conv 1, 2, 5: 32 -> 16 -> 8 -> 4 and 28 -> 14 -> 7 -> 4
    ("alexnet", (32, 32, 3)): conv(5, 3, 64) + ALEXNET_BODY,
    ("alexnet", (28, 28, 1)): conv(5, 1, 64) + ALEXNET_BODY,
    # VGG-16 (2, 2, 3, 3, 3 convs), half widths, five pools down to 1x1x256, dense 256
    ("vgg", (32, 32, 3)): conv(3, 3, 32) + VGG16_HALF,
    ("vgg", (28, 28, 1)): conv(3, 1, 32) + VGG16_HALF,
    ("inception", (32, 32, 3)): inception_count(3),
    ("inception", (28, 28, 1)): inception_count(1),
    ("resnet", (32, 32, 3)): 271_098,      # ResNet-20, paper 0.27M; hand count below
    ("resnet", (28, 28, 1)): 271_098 - 9 * 2 * 16,  # the stem sees 1 channel instead of 3
}


@pytest.mark.parametrize("depth, count, published", [(32, 466_426, 0.46e6), (56, 857_082, 0.85e6)])
def test_cifar_resnets_match_the_paper(depth, count, published):
    model = build_model("resnet", (32, 32, 3), 10, depth=depth)
    assert model.count_params() == count
    assert abs(count - published) / published < 0.025
    # 6n + 2: stem + 2 convs per block + the dense layer are the weighted layers.
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert len(convs) + 1 == depth


def test_resnet20_hand_count_and_projection_shortcut():
    # Stem 3*3*3*16 + BN 4*16; stage 1: 6 convs 3*3*16*16 + BN; stage 2: 3*3*16*32 + 5 convs
    # 3*3*32*32 + BN; stage 3 likewise with 64; dense 64*10 + 10. No conv biases next to BN.
    stage1 = 6 * (9 * 16 * 16 + 64)
    stage2 = 9 * 16 * 32 + 128 + 5 * (9 * 32 * 32 + 128)
    stage3 = 9 * 32 * 64 + 256 + 5 * (9 * 64 * 64 + 256)
    assert 9 * 3 * 16 + 64 + stage1 + stage2 + stage3 + 650 == 271_098
    projection = build_model("resnet", (32, 32, 3), 10, shortcut="B")
    # Option B adds two 1x1 projections with BN: 16*32 + 4*32 and 32*64 + 4*64.
    assert projection.count_params() == 271_098 + 16 * 32 + 128 + 32 * 64 + 256


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_reference_counts_output_shapes_and_probabilities(name, shape):
    model = build_model(name, shape, 10)
    assert model.count_params() == REFERENCE_COUNTS[(name, shape)]
    assert model.layers[1].name == "rescale"
    images = np.random.RandomState(0).randint(0, 256, (2,) + shape).astype(np.float32)
    probabilities = model(images, training=False).numpy()
    assert probabilities.shape == (2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_mnist_cnn_keeps_its_layer_names_and_rescaling():
    model = build_model("mnist_cnn", (28, 28, 1), 10)
    assert [layer.name for layer in model.layers] == [
        "image", "rescale", "conv1", "conv2", "pool", "dropout1", "flatten", "dense", "dropout2",
        "probabilities"]
    assert model.get_layer("rescale").scale == pytest.approx(1 / 255)


@pytest.mark.parametrize("depth, convs", [(11, 8), (13, 10), (16, 13), (19, 16)])
def test_vgg_depths_count_weight_layers(depth, convs):
    model = build_model("vgg", (32, 32, 3), 10, depth=depth)
    layers = [layer for layer in model.layers
              if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense))]
    assert len(layers) == depth and len(layers) - 3 == convs


def test_mlp_units_and_options():
    model = build_model("mlp", (28, 28, 1), 10, units=[64, 32], dense_dropout=None)
    assert [layer.units for layer in model.layers if isinstance(layer, tf.keras.layers.Dense)] \
        == [64, 32, 10]
    assert model.get_layer("dropout1").rate == 0.5  # None means the model's default


@pytest.mark.parametrize("normalization, layer_class", [
    ("batch", tf.keras.layers.BatchNormalization), ("layer", tf.keras.layers.GroupNormalization),
    ("group", tf.keras.layers.GroupNormalization)])
def test_normalization_sits_between_conv_and_activation(normalization, layer_class):
    model = build_model("lenet5", (28, 28, 1), 10, normalization=normalization)
    names = [layer.name for layer in model.layers]
    suffix = {"batch": "bn", "layer": "ln", "group": "gn"}[normalization]
    c1 = names.index("c1")
    assert names[c1 + 1:c1 + 3] == [f"c1_{suffix}", "c1_relu"]
    assert isinstance(model.get_layer(f"c1_{suffix}"), layer_class)
    assert model.get_layer("c1").use_bias is False  # the normalization's offset replaces it
    if normalization == "group":
        assert model.get_layer("c1_gn").groups == 2  # gcd(6 channels, 8)
        assert model.get_layer("c3_gn").groups == 8
    if normalization == "layer":
        assert model.get_layer("c1_ln").groups == 1
        assert isinstance(model.get_layer("c5_ln"), tf.keras.layers.LayerNormalization)


def test_batch_norm_momentum_and_group_count_are_options():
    model = build_model("lenet5", (28, 28, 1), 10, normalization="batch", bn_momentum=0.9)
    assert model.get_layer("c1_bn").momentum == pytest.approx(0.9)
    default = build_model("lenet5", (28, 28, 1), 10, normalization="batch")
    assert default.get_layer("c1_bn").momentum == pytest.approx(0.99)  # Keras' own
    grouped = build_model("lenet5", (28, 28, 1), 10, normalization="group", norm_groups=4)
    assert grouped.get_layer("c3_gn").groups == 4  # gcd(16 channels, 4)
    with pytest.raises(ValueError, match=r"bn_momentum must be a number in \[0, 1\), got 1.5"):
        build_model("lenet5", (28, 28, 1), 10, normalization="batch", bn_momentum=1.5)


def test_activation_initializer_and_penalties():
    model = build_model("mnist_cnn", (28, 28, 1), 10, activation="leaky_relu",
                        activation_params={"alpha": 0.2}, initializer="he_normal", l1=1e-5,
                        l2=1e-4)
    assert model.get_layer("conv1_leaky_relu").alpha == pytest.approx(0.2)
    assert isinstance(model.get_layer("conv1").kernel_initializer, tf.keras.initializers.HeNormal)
    # One L1+L2 penalty per kernel: conv1, conv2, dense, probabilities.
    assert len(model.losses) == 4
    kernel = model.get_layer("conv1").kernel.numpy()
    expected = 1e-5 * np.abs(kernel).sum() + 1e-4 * np.square(kernel).sum()
    assert float(model.losses[0]) == pytest.approx(expected, rel=1e-4)
    assert model.count_params() == 1_199_882


def test_maxout_widens_the_layer_before_it():
    model = build_model("mnist_cnn", (28, 28, 1), 10, activation="maxout",
                        activation_params={"pieces": 3})
    assert model.get_layer("conv1").filters == 96
    assert model.get_layer("conv1_maxout").output_shape[-1] == 32
    assert model.get_layer("dense").units == 384
    with pytest.raises(ValueError, match="resnet cannot use activation 'maxout'"):
        build_model("resnet", (32, 32, 3), 10, activation="maxout")


def test_input_normalization_replaces_the_rescaling():
    images = np.full((1, 28, 28, 1), 255.0, np.float32)
    symmetric = build_model("mlp", (28, 28, 1), 10, units=[4], normalization_input="symmetric")
    assert symmetric.get_layer("rescale")(images).numpy().max() == pytest.approx(1.0)
    assert symmetric.get_layer("rescale")(0 * images).numpy().min() == pytest.approx(-1.0)
    standard = build_model("mlp", (28, 28, 1), 10, units=[4], normalization_input="standardize",
                           mean=[0.1307], std=[0.3081])
    value = standard.get_layer("standardize")(images).numpy().max()
    assert value == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)
    with pytest.raises(ValueError, match="one per channel"):
        build_model("lenet5", (32, 32, 3), 10, normalization_input="standardize", mean=[0.5],
                    std=[0.2])
    with pytest.raises(ValueError, match="needs mean and std"):
        build_model("lenet5", (28, 28, 1), 10, normalization_input="standardize")


def test_custom_layers_survive_saving(tmp_path):
    from nnfund_spark.fundamentals.activations import get_activation
    from nnfund_spark.models.resnet import zero_pad_shortcut
    # Every custom layer (maxout, step, tanh-GELU, option-A shortcut; all registered in
    # models.custom_objects) in one small model, so a single save/load covers them all.
    inputs = tf.keras.Input((4, 4, 2))
    x = zero_pad_shortcut(6, 2)(inputs)
    x = tf.keras.layers.Dense(8)(tf.keras.layers.Flatten()(x))
    x = get_activation("step")(get_activation("maxout", pieces=2)(x))
    outputs = get_activation("gelu", approximate=True)(tf.keras.layers.Dense(3)(x))
    model = tf.keras.Model(inputs, outputs)
    images = np.random.RandomState(0).normal(size=(2, 4, 4, 2))
    shortcut = model.layers[1](images).numpy()
    np.testing.assert_allclose(shortcut[..., :2], images[:, ::2, ::2, :], rtol=1e-6)
    assert shortcut.shape == (2, 2, 2, 6) and not shortcut[..., 2:].any()
    path = str(tmp_path / "model")
    model.save(path)  # the SavedModel format MLflow's tensorflow flavor writes
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(loaded(images).numpy(), model(images).numpy(), rtol=1e-5)


def test_bad_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError,
                       match="unknown model 'vgg99'; available: alexnet, convnet, inception"):
        build_model("vgg99", (28, 28, 1), 10)
    with pytest.raises(ValueError, match=r"model 'mlp' does not accept depth; accepted: .*units"):
        build_model("mlp", (28, 28, 1), 10, depth=20)
    with pytest.raises(ValueError, match="unknown normalization 'bn'; available: none, batch"):
        build_model("mnist_cnn", (28, 28, 1), 10, normalization="bn")
    with pytest.raises(ValueError, match="unknown initializer 'zeros'; available: glorot"):
        build_model("mnist_cnn", (28, 28, 1), 10, initializer="zeros")
    with pytest.raises(ValueError, match="unknown activation 'relu6'; available: step, sigmoid"):
        build_model("mnist_cnn", (28, 28, 1), 10, activation="relu6")
    with pytest.raises(ValueError, match="unknown vgg depth 15; available: 11, 13, 16, 19"):
        build_model("vgg", (32, 32, 3), 10, depth=15)
    with pytest.raises(ValueError, match="depth must be 6n \\+ 2"):
        build_model("resnet", (32, 32, 3), 10, depth=21)
    with pytest.raises(ValueError, match="unknown resnet shortcut 'C'"):
        build_model("resnet", (32, 32, 3), 10, shortcut="C")
    with pytest.raises(ValueError, match="dropout must be a number in \\[0, 1\\), got 1.5"):
        build_model("mnist_cnn", (28, 28, 1), 10, dropout=1.5)
    with pytest.raises(ValueError, match="l2 must be a number >= 0, got -1"):
        build_model("mnist_cnn", (28, 28, 1), 10, l2=-1)


def test_model_options_lists_common_and_specific_defaults():
    options = model_options("resnet")
    assert options["depth"] == 20 and options["normalization"] == "batch"
    assert options["initializer"] == "he_normal" and options["shortcut"] == "A"
    assert model_options("mnist_cnn")["normalization"] == "none"
    assert model_options("mlp")["units"] == (1000, 1000)
    for name in MODELS:
        assert {"activation", "dropout", "dense_dropout", "l1", "l2", "normalization",
                "initializer", "normalization_input"} <= set(model_options(name))


# --- conv arithmetic ---------------------------------------------------------------------------

def test_course_examples():
    assert conv_output_size(7, 3, 0, 1) == 5   # 7x7 input, 3x3 filter, stride 1
    assert conv_output_size(7, 3, 0, 2) == 3   # stride 2
    assert conv_output_size(32, 5, 2, 1) == 32  # 'same' for 5x5
    assert conv_output_size(227, 11, 0, 4) == 55  # AlexNet conv1
    assert conv_params(5, 3, 5) == 380          # 5 filters of 5x5 on depth 3
    assert conv_params(11, 3, 96) == 34_944     # AlexNet conv1
    assert same_padding(3) == 1 and same_padding(5) == 2 and same_padding(1) == 0
    assert pool_output_size(224, 2) == 112


def test_impossible_geometries_do_not_fit():
    with pytest.raises(ValueError, match=r"does not fit.*\(4\)/3 \+ 1 = 2.333 is not an integer"):
        conv_output_size(7, 3, 0, 3)           # the course's 7x7, 3x3, stride 3
    with pytest.raises(ValueError, match="does not fit: it is larger"):
        conv_output_size(3, 5, 0, 1)
    with pytest.raises(ValueError, match="stride S must be an integer >= 1, got 0"):
        conv_output_size(7, 3, 0, 0)
    with pytest.raises(ValueError, match="even"):
        same_padding(4)


@pytest.mark.parametrize("n, f, p, s, depth, k", [(28, 3, 0, 1, 1, 32), (32, 5, 2, 1, 3, 6),
                                                  (31, 3, 1, 2, 16, 8), (9, 3, 0, 3, 2, 4),
                                                  (227, 11, 0, 4, 3, 96)])
def test_arithmetic_agrees_with_keras(n, f, p, s, depth, k):
    inputs = tf.keras.Input((n, n, depth))
    padded = tf.keras.layers.ZeroPadding2D(p)(inputs) if p else inputs
    conv = tf.keras.layers.Conv2D(k, f, strides=s)
    output = conv(padded)
    size = conv_output_size(n, f, p, s)
    assert tuple(output.shape[1:]) == (size, size, k)
    assert conv.count_params() == conv_params(f, depth, k)
    if s == 1 and f % 2:
        same = tf.keras.layers.Conv2D(k, f, padding="same")(inputs)
        assert same.shape[1] == conv_output_size(n, f, same_padding(f), 1) == n


def test_keras_silently_drops_a_border_where_the_formula_refuses():
    output = tf.keras.layers.Conv2D(1, 3, strides=2)(tf.keras.Input((32, 32, 1)))
    assert output.shape[1] == 15  # floor((32 - 3) / 2) + 1: the last column is never seen
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_size(32, 3, 0, 2)


def test_train_config_reaches_the_model_builder():
    """train.bn_momentum and train.norm_groups go to the builder; unset, the model's defaults."""
    from nnfund_spark.config import load_config
    from nnfund_spark.training.launcher import model_kwargs

    train = load_config(None, ["train.model=lenet5", "train.normalization=batch",
                               "train.bn_momentum=0.9", "train.norm_groups=4"]).train
    model = build_model("lenet5", (28, 28, 1), 10, **model_kwargs(train, {}))
    assert model.get_layer("c1_bn").momentum == pytest.approx(0.9)
    defaults = model_kwargs(load_config(None, []).train, {})
    assert defaults["bn_momentum"] is None and defaults["norm_groups"] is None


# (model, image shape, options, what the refusal says): values a config can carry that no
# builder accepts. check_model (run by the driver before any rank starts) must refuse exactly
# what build_model (run by the ranks) refuses, with the same message.
REFUSED_OPTIONS = [
    ("convnet", (28, 28, 1), {"dense_units": 1e3}, r"dense_units must be an integer >= 0"),
    ("convnet", (28, 28, 1), {"filters": 32}, r"filters must be a non-empty list of positive"),
    ("convnet", (28, 28, 1), {"filters": []}, r"filters must be a non-empty list"),
    ("mlp", (28, 28, 1), {"units": [1e3]}, r"units must be a list of positive integers"),
    ("vgg", (32, 32, 3), {"depth": 16.0}, r"unknown vgg depth 16.0; available: 11, 13"),
    ("resnet", (32, 32, 3), {"depth": 21}, r"depth must be 6n \+ 2"),
    ("resnet", (32, 32, 3), {"activation": "maxout"}, r"resnet cannot use activation 'maxout'"),
    ("alexnet", (32, 32, 3), {"width": 0}, r"width must be a number > 0, got 0"),
    ("inception", (32, 32, 3), {"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ("mnist_cnn", (28, 28, 1), {"bn_momentum": 2}, r"bn_momentum must be a number in"),
    ("mnist_cnn", (28, 28, 1), {"normalization_input": "standardize", "mean": [0.5, 0.5, 0.5],
                                "std": [0.2, 0.2, 0.2]}, r"both need one per channel \(1\)"),
    ("lenet5", (28, 28, 1), {"units": [10]}, r"model 'lenet5' does not accept units"),
]


@pytest.mark.parametrize("name,shape,options,message", REFUSED_OPTIONS,
                         ids=[f"{r[0]}-{sorted(r[2])}" for r in REFUSED_OPTIONS])
def test_check_model_refuses_what_build_model_refuses(name, shape, options, message):
    from nnfund_spark.models.zoo import check_model

    with pytest.raises(ValueError, match=message) as checked:
        check_model(name, shape, 10, **options)
    with pytest.raises(ValueError, match=message) as built:
        build_model(name, shape, 10, **options)
    assert str(checked.value) == str(built.value)


# The smallest image each valid-padded model fits, by its layer arithmetic; one pixel less and
# Keras itself cannot build it (a pool would see 1 pixel).
SMALLEST_IMAGE = [("lenet5", {}, 12), ("mnist_cnn", {}, 6), ("convnet", {"filters": [4, 4]}, 10),
                  ("convnet", {"filters": [4, 4, 4]}, 22)]


@pytest.mark.parametrize("name,options,smallest", SMALLEST_IMAGE)
def test_check_model_knows_the_smallest_image_keras_can_build(name, options, smallest,
                                                              monkeypatch):
    from nnfund_spark.models import classic
    from nnfund_spark.models.blocks import check_image_model
    from nnfund_spark.models.zoo import check_model

    fits, too_small = (smallest, smallest + 3, 1), (smallest - 1, smallest + 3, 1)
    check_model(name, fits, 10, **options)
    assert build_model(name, fits, 10, **options).output_shape == (None, 10)
    with pytest.raises(ValueError, match=f"{name}.* (does|do) not fit"):
        check_model(name, too_small, 10, **options)
    # Without the geometry check, Keras fails on the same image: the check is not stricter.
    monkeypatch.setattr(classic, f"check_{name}", lambda shape, classes, *args: (
        *check_image_model(shape, classes, *args[-3:]),
        *([tuple(args[0])] if name == "convnet" else ["same"] if name == "lenet5" else [])))
    with pytest.raises(ValueError, match="Negative dimension size"):
        build_model(name, too_small, 10, **options)


def test_check_model_needs_no_tensorflow():
    """The driver checks the model without importing TensorFlow (seconds and memory it does
    not otherwise need)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from nnfund_spark.models.zoo import MODELS, check_model\n"
            "for name in MODELS:\n"
            "    check_model(name, (32, 32, 3), 10)\n"
            "try:\n"
            "    check_model('convnet', (28, 28, 1), 10, dense_units=1e3)\n"
            "except ValueError as exc:\n"
            "    print(exc)\n"
            "print('tensorflow' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0].startswith("dense_units must be an integer >= 0") and out[1] == "False"
