"""The one place the Petastorm schema of a prepared image dataset is declared."""
from __future__ import annotations

import numpy as np
from petastorm.codecs import CompressedImageCodec, NdarrayCodec, ScalarCodec
from petastorm.unischema import Unischema, UnischemaField
from pyspark.sql.types import IntegerType, LongType

# Bump when fields change; the manifest records it and readers refuse a newer one.
SCHEMA_VERSION = 1


def image_schema(height: int, width: int, channels: int, codec: str = "png") -> Unischema:
    """Unischema for one example: image uint8 HxWxC, integer label, and its source index.

    `index` is the example's position in its official source split: it makes split membership
    checkable and lets tests prove each example is read exactly once.

    Petastorm's PNG codec stores grayscale as 2-D, so with codec "png" and one channel the field
    is H x W; `as_hwc` restores H x W x 1. Any Petastorm reader can open the data without this
    package (Petastorm refuses to unpickle codecs from other packages).
    """
    if codec == "png":
        image_codec = CompressedImageCodec("png")
    elif codec == "ndarray":
        image_codec = NdarrayCodec()
    else:
        raise ValueError(f"image codec '{codec}' is not one of png, ndarray")
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {channels}")
    return Unischema("ImageExample", [
        UnischemaField("index", np.int64, (), ScalarCodec(LongType()), False),
        UnischemaField("image", np.uint8, stored_image_shape(height, width, channels, codec),
                       image_codec, False),
        UnischemaField("label", np.int32, (), ScalarCodec(IntegerType()), False),
    ])


def stored_image_shape(height: int, width: int, channels: int, codec: str) -> tuple:
    if codec == "png" and channels == 1:
        return (height, width)
    return (height, width, channels)


def as_hwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W) grayscale batches -> (N, H, W, 1); (N, H, W, C) passes through."""
    return images[..., np.newaxis] if images.ndim == 3 else images
