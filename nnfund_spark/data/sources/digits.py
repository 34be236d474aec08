"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1,797 images of 8 x 8, no
download needed, so a first run works with nothing but the package installed."""
from __future__ import annotations

import hashlib

import numpy as np

from nnfund_spark.data.idx import DataSourceError
from nnfund_spark.data.sources import ArraySource


def load_digits() -> ArraySource:
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise DataSourceError("data.source=digits needs scikit-learn: pip install "
                              "'scikit-learn>=1.0' (or pick another data.source)") from exc
    bunch = sklearn_digits()
    # Pixels are counts 0..16 of set bits in 4 x 4 blocks; scale them to the 0..255 range every
    # other source uses (16 -> 255), so models and normalisation need no special case.
    images = np.rint(np.asarray(bunch.images, np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, np.int64)
    digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
    return ArraySource(name="digits", splits={"train": (images[..., np.newaxis], labels)},
                       class_names=[str(d) for d in range(10)], checksum_sha256=digest,
                       checksums_verified=False,
                       info={"format": "sklearn.datasets.load_digits"},
                       segments={"train": [("digits", len(labels))]})
