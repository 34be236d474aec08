"""MNIST-format IDX sources (mnist, fashion_mnist) as an ArraySource."""
from __future__ import annotations

import numpy as np

from nnfund_spark.data.idx import SOURCES, DataSourceError, parse_idx, read_idx_files
from nnfund_spark.data.sources import ArraySource, digest_files


def load_idx(config) -> ArraySource:
    files = read_idx_files(config.source, config.raw_dir, download_missing=config.download,
                           check=config.verify_checksums)
    splits, segments = {}, {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path, image_bytes = files[f"{prefix}-images-idx3-ubyte"]
        label_path, label_bytes = files[f"{prefix}-labels-idx1-ubyte"]
        images = parse_idx(image_bytes, str(image_path))
        labels = parse_idx(label_bytes, str(label_path))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataSourceError(f"{image_path}: images {images.shape} and {label_path.name} "
                                  f"labels {labels.shape} do not match (expected N x H x W and N)")
        if images.dtype != np.uint8:
            raise DataSourceError(f"{image_path}: IDX element type {images.dtype}; accepted: "
                                  f"unsigned byte (0x08) pixels")
        splits[split] = (images[..., np.newaxis], labels.astype(np.int64))
        segments[split] = [(label_path.name, len(labels))]
    # The same formula as the published-checksum digest, so verified files give the same value.
    checksum = digest_files([(stem, data) for stem, (_, data) in files.items()])
    return ArraySource(
        name=config.source, splits=splits, class_names=list(SOURCES[config.source].class_names),
        checksum_sha256=checksum, checksums_verified=config.verify_checksums,
        info={"format": "idx", "raw_dir": str(next(iter(files.values()))[0].parent.resolve())},
        segments=segments)
