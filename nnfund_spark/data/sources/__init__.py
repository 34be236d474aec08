"""Raw image sources. Array sources (IDX, CIFAR-10, digits) are small enough to load on the driver
as uint8 arrays; image folders are read by Spark on the executors (image_folder.py).

Every array source comes back as an ArraySource, so splitting, bad-label handling, colour
conversion and writing are written once (prepare.py, writer.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from nnfund_spark.data.bad_input import LABEL_OUT_OF_RANGE, BadItem

ARRAY_SOURCES = ("mnist", "fashion_mnist", "cifar10", "digits")


@dataclass
class ArraySource:
    """A source held in memory: per official split, uint8 N x H x W x C images and int labels."""
    name: str
    splits: dict          # "train" (always), "test" (when the source has an official one)
    class_names: list
    checksum_sha256: str  # of the raw content actually read
    checksums_verified: bool  # True when it matched published checksums
    info: dict = field(default_factory=dict)       # format, raw_dir, ... for the manifest
    # Per split: [(file name, rows), ...] in row order, so row i can be named "<file>[j]".
    segments: dict = field(default_factory=dict)

    def item_name(self, split: str, position: int) -> str:
        start = 0
        for name, rows in self.segments.get(split, ()):
            if position < start + rows:
                return f"{name}[{position - start}]"
            start += rows
        return f"{self.name} {split}[{position}]"


def digest_files(named_bytes: list[tuple[str, bytes]]) -> str:
    """SHA-256 over sorted (name, sha256(content)) pairs: one checksum for a set of files."""
    digest = hashlib.sha256()
    for name, data in sorted(named_bytes):
        digest.update(f"{name}:{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def bad_labels(source: ArraySource, split: str) -> tuple[list[BadItem], np.ndarray]:
    """Rows whose label is outside 0..num_classes-1, and the boolean mask of the good rows."""
    labels = source.splits[split][1]
    good = (labels >= 0) & (labels < len(source.class_names))
    bad = [BadItem(source.item_name(split, int(i)), LABEL_OUT_OF_RANGE,
                   f"label {int(labels[i])}; accepted: 0..{len(source.class_names) - 1}")
           for i in np.flatnonzero(~good)]
    return bad, good


def load_array_source(config) -> ArraySource:
    """Load config.source (one of ARRAY_SOURCES) from config.raw_dir."""
    if config.source in ("mnist", "fashion_mnist"):
        from nnfund_spark.data.sources.idx_source import load_idx
        return load_idx(config)
    if config.source == "cifar10":
        from nnfund_spark.data.sources.cifar import load_cifar10
        return load_cifar10(config.raw_dir, config.cifar_format)
    if config.source == "digits":
        from nnfund_spark.data.sources.digits import load_digits
        return load_digits()
    raise ValueError(f"'{config.source}' is not an array source; accepted: "
                     f"{', '.join(ARRAY_SOURCES)}")
