"""Data augmentation for the training split, and the input-normalization layer of the models.

Augmentation works on float32 NHWC batches of raw pixels (0..255) and is meant for
``dataset.batch(...).map(augmenter)`` on the **training split only**: validation and test must
see the images as stored, or their metrics stop being comparable across runs. Every random layer
is seeded, so a given seed reproduces the same sequence of transforms.

The ``augmentations`` mapping turns each transform on with its strength (0, False or None = off):

===============  =====================================================================  =======
key              meaning                                                                example
===============  =====================================================================  =======
``random_crop``  pad by this many pixels (zeros), crop back at a random offset per       4
                 image (the CIFAR recipe of He et al. 2016)
``flip``         mirror left-right with probability 1/2 (wrong for digits: a mirrored    true
                 2 is no 2, so leave it off for MNIST)
``scale``        zoom in or out by up to this fraction of the size                       0.1
``rotation``     rotate by up to this many degrees either way                            15
``translation``  shift by up to this fraction of height/width                            0.1
``noise``        add Gaussian noise with this standard deviation, in pixel units         8
===============  =====================================================================  =======

Keras' ``RandomCrop`` is not used for ``random_crop``: it crops a whole batch at one location.
A zero-filled ``RandomTranslation`` with nearest-pixel sampling is the same operation per image:
shifting by (dy, dx) with zeros coming in is exactly padding and cropping at offset (dy, dx).
Results are clipped back to 0..255, so noise never produces impossible pixel values.
"""
from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

AUGMENTATIONS = ("random_crop", "flip", "scale", "rotation", "translation", "noise")
FILL_MODES = ("constant", "reflect", "wrap", "nearest")
INPUT_NORMALIZATIONS = ("unit", "symmetric", "standardize")


def _strength(key: str, value) -> float:
    """The numeric strength of one augmentation; ValueError for a bad type or negative value."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"augmentation '{key}': expected a number >= 0 or true/false, "
                         f"got {value!r}")
    return float(value)


def validated_strengths(augmentations: Mapping[str, object], image_shape: Sequence[int],
                        fill_mode: str = "constant") -> dict[str, float]:
    """Every strength checked, the crop's bound by the image size included (no TensorFlow:
    the driver runs it before any rank starts)."""
    if fill_mode not in FILL_MODES:
        raise ValueError(f"unknown fill_mode '{fill_mode}'; available: {', '.join(FILL_MODES)}")
    strengths = checked_strengths(augmentations)
    height, width = int(image_shape[0]), int(image_shape[1])
    pad = strengths["random_crop"]
    if pad >= min(height, width):
        raise ValueError(f"augmentation 'random_crop': padding must be below the image size "
                         f"{height}x{width}, got {pad:g}")
    return strengths


def checked_strengths(augmentations: Mapping[str, object]) -> dict[str, float]:
    """Every strength checked that can be without the image size (the config checks these
    before Spark starts; ``validated_strengths`` adds the crop's bound by the image size once
    the dataset is known)."""
    unknown = sorted(set(augmentations) - set(AUGMENTATIONS))
    if unknown:
        raise ValueError(f"unknown augmentation {', '.join(repr(key) for key in unknown)}; "
                         f"available: {', '.join(AUGMENTATIONS)}")
    strengths = {key: _strength(key, augmentations.get(key)) for key in AUGMENTATIONS}
    if strengths["rotation"] > 180:
        raise ValueError(f"augmentation 'rotation': at most 180 degrees, "
                         f"got {strengths['rotation']}")
    for key in ("scale", "translation"):
        if strengths[key] >= 1:
            raise ValueError(f"augmentation '{key}': must be a fraction below 1, "
                             f"got {strengths[key]}")
    if strengths["random_crop"] != int(strengths["random_crop"]):
        raise ValueError(f"augmentation 'random_crop': padding must be a whole number of pixels, "
                         f"got {strengths['random_crop']}")
    return strengths


def augmentation_layers(augmentations: Mapping[str, object], image_shape: Sequence[int],
                        seed: int, fill_mode: str = "constant") -> list:
    """The Keras layers for the enabled geometric transforms and flip, in the order they are
    applied (noise is added by ``make_augmenter``, see there)."""
    import tensorflow as tf

    layers = tf.keras.layers
    strengths = validated_strengths(augmentations, image_shape, fill_mode)
    height, width = int(image_shape[0]), int(image_shape[1])
    pad = strengths["random_crop"]

    # Each layer gets its own seed so turning one transform on does not change another's draws.
    result = []
    if pad:
        result.append(layers.RandomTranslation(pad / height, pad / width, fill_mode="constant",
                                               interpolation="nearest", fill_value=0.0,
                                               seed=seed + 1, name="random_crop"))
    if strengths["translation"]:
        result.append(layers.RandomTranslation(strengths["translation"], strengths["translation"],
                                               fill_mode=fill_mode, seed=seed + 2,
                                               name="translation"))
    if strengths["scale"]:
        result.append(layers.RandomZoom(strengths["scale"], fill_mode=fill_mode, seed=seed + 3,
                                        name="scale"))
    if strengths["rotation"]:
        # Keras measures rotation as a fraction of a full turn.
        result.append(layers.RandomRotation(strengths["rotation"] / 360.0, fill_mode=fill_mode,
                                            seed=seed + 4, name="rotation"))
    if strengths["flip"]:
        result.append(layers.RandomFlip("horizontal", seed=seed + 5, name="flip"))
    return result


def make_augmenter(augmentations: Mapping[str, object], image_shape: Sequence[int], seed: int,
                   fill_mode: str = "constant") -> Optional[Callable]:
    """A ``(images, labels) -> (images, labels)`` function for ``dataset.map`` on batches of the
    training split, or None when nothing is enabled (so the caller can skip the map)."""
    import tensorflow as tf

    layers = augmentation_layers(augmentations, image_shape, seed, fill_mode)
    noise = validated_strengths(augmentations, image_shape, fill_mode)["noise"]
    if not layers and not noise:
        return None
    # Keras' GaussianNoise ignores its seed between fresh instances (checked on TF 2.15), so the
    # noise comes from a seeded generator instead, which makes runs reproducible.
    generator = tf.random.Generator.from_seed(seed + 6) if noise else None

    def augment(images, labels):
        images = tf.cast(images, tf.float32)
        for layer in layers:
            # training=True: these layers are identity functions otherwise.
            images = layer(images, training=True)
        if generator is not None:
            images = images + generator.normal(tf.shape(images), stddev=noise)
        return tf.clip_by_value(images, 0.0, 255.0), labels

    return augment


def check_input_normalization(kind: str, mean: Optional[Sequence[float]] = None,
                              std: Optional[Sequence[float]] = None,
                              channels: Optional[int] = None):
    """The checks of ``input_normalization_layer``, without TensorFlow. Returns (mean, std) as
    lists of floats for ``standardize``, else (None, None)."""
    if kind not in INPUT_NORMALIZATIONS:
        raise ValueError(f"unknown input normalization '{kind}'; available: "
                         f"{', '.join(INPUT_NORMALIZATIONS)}")
    if kind != "standardize":
        if mean is not None or std is not None:
            raise ValueError(f"mean/std are only used by input normalization 'standardize', "
                             f"not '{kind}'")
        return None, None
    if mean is None or std is None:
        raise ValueError("input normalization 'standardize' needs mean and std (per channel, "
                         "in [0, 1] units: the manifest's train_channel_mean/train_channel_std)")
    try:
        mean, std = [float(value) for value in mean], [float(value) for value in std]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"standardize: mean and std must be lists of numbers, one per "
                         f"channel; got mean={mean!r}, std={std!r}") from exc
    if len(mean) != len(std) or (channels is not None and len(mean) != channels):
        raise ValueError(f"standardize: mean has {len(mean)} values and std {len(std)}; "
                         f"both need one per channel ({channels if channels else 'equal counts'})")
    if any(value <= 0 for value in std):
        raise ValueError(f"standardize: every std must be > 0, got {std}")
    return mean, std


def input_normalization_layer(kind: str = "unit", mean: Optional[Sequence[float]] = None,
                              std: Optional[Sequence[float]] = None,
                              channels: Optional[int] = None):
    """The first layer of every model: maps raw 0..255 pixels to the network's input range.

    - ``unit``: x / 255 → [0, 1] (the historical default; layer named ``rescale``);
    - ``symmetric``: x / 127.5 − 1 → [−1, 1] (zero-centred, what tanh units like);
    - ``standardize``: (x / 255 − mean) / std per channel, with ``mean``/``std`` in [0, 1] units
      as the manifest records them (``train_channel_mean``/``train_channel_std``).

    Because the layer lives inside the model, a logged model still scores raw stored pixels.
    """
    import tensorflow as tf

    mean, std = check_input_normalization(kind, mean, std, channels)
    if kind == "unit":
        return tf.keras.layers.Rescaling(1.0 / 255.0, name="rescale")
    if kind == "symmetric":
        return tf.keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")
    # Normalization computes (x − mean) / sqrt(variance); express both in 0..255 pixel units.
    return tf.keras.layers.Normalization(axis=-1, mean=[255.0 * value for value in mean],
                                         variance=[(255.0 * value) ** 2 for value in std],
                                         name="standardize")
