"""CIFAR-10 in either official layout (https://www.cs.toronto.edu/~kriz/cifar.html):

- python (cifar-10-python.tar.gz): pickled dicts data_batch_1..5 and test_batch with b'data'
  (N x 3072 uint8: the 1024 red, then 1024 green, then 1024 blue values of each 32 x 32 image,
  row-major) and b'labels'; batches.meta holds b'label_names'.
- binary (cifar-10-binary.tar.gz): data_batch_1..5.bin and test_batch.bin, each record one label
  byte then the same 3072 pixel bytes; batches.meta.txt holds one label name per line.

The files may sit in raw_dir itself or in the archive's folder inside it.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from nnfund_spark.data.idx import DataSourceError
from nnfund_spark.data.sources import ArraySource, digest_files

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
PIXELS = 3 * 32 * 32
_SUBDIRS = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickling runs arbitrary code; these files come from outside, so only the globals a
    pickled numpy array needs are allowed (numpy 2 pickles name numpy._core; protocol-2
    pickles written by Python 3 rebuild bytes with _codecs.encode, which only encodes text)."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        module = module.replace("numpy._core", "numpy.core")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch "
                                         f"holds only arrays, lists and strings")
        return super().find_class(module, name)


def _find_dir(raw_dir: Path, cifar_format: str) -> tuple[Path, str]:
    if not raw_dir.is_dir():
        raise DataSourceError(f"raw data directory not found: {raw_dir} (expected CIFAR-10 "
                              f"batches there, from https://www.cs.toronto.edu/~kriz/cifar.html)")
    formats = ("python", "binary") if cifar_format == "auto" else (cifar_format,)
    first = {"python": TRAIN_BATCHES[0], "binary": TRAIN_BATCHES[0] + ".bin"}
    for fmt in formats:
        for folder in (raw_dir, raw_dir / _SUBDIRS[fmt]):
            if (folder / first[fmt]).is_file():
                return folder, fmt
    wanted = " or ".join(f"{first[f]} ({f} format)" for f in formats)
    raise DataSourceError(f"{raw_dir}: no CIFAR-10 batches found; expected {wanted} in it or in "
                          f"{' / '.join(_SUBDIRS[f] for f in formats)} inside it")


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise DataSourceError(f"{path.parent}: missing {path.name} (CIFAR-10 has "
                              f"{', '.join(TRAIN_BATCHES)}, {TEST_BATCH} and the label names)")
    return path.read_bytes()


def _unpickle(path: Path, data: bytes) -> dict:
    import io
    try:
        loaded = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataSourceError(f"{path}: not a readable CIFAR-10 pickle ({exc}); truncated or "
                              f"not from cifar-10-python.tar.gz?") from exc
    if not isinstance(loaded, dict):
        raise DataSourceError(f"{path}: expected a pickled dict, got {type(loaded).__name__}")
    # Python 2 pickles give bytes keys; files re-pickled under Python 3 may have str keys.
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _python_batch(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, data)
    pixels, labels = batch.get("data"), batch.get("labels")
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 \
            or pixels.shape[1] != PIXELS:
        shape = getattr(pixels, "shape", None)
        raise DataSourceError(f"{path}: b'data' must be an N x {PIXELS} uint8 array, got "
                              f"{type(pixels).__name__} {shape}")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(pixels),):
        raise DataSourceError(f"{path}: {len(pixels)} images but {labels.size} b'labels'")
    return pixels, labels


def _binary_batch(path: Path, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not data or len(data) % (PIXELS + 1):
        raise DataSourceError(f"{path}: {len(data)} bytes is not a whole number of "
                              f"{PIXELS + 1}-byte records (1 label + {PIXELS} pixels): truncated?")
    records = np.frombuffer(data, np.uint8).reshape(-1, PIXELS + 1)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _label_names(folder: Path, fmt: str) -> tuple[list[str], bytes, str]:
    if fmt == "python":
        path = folder / "batches.meta"
        data = _read(path)
        names = _unpickle(path, data).get("label_names")
        if not isinstance(names, list) or not names:
            raise DataSourceError(f"{path}: expected a non-empty b'label_names' list")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    else:
        path = folder / "batches.meta.txt"
        data = _read(path)
        names = [line.strip() for line in data.decode("utf-8", "replace").splitlines()
                 if line.strip()]
        if not names:
            raise DataSourceError(f"{path}: no label names (expected one per line)")
    return names, data, path.name


def load_cifar10(raw_dir: str | Path, cifar_format: str = "auto") -> ArraySource:
    """Both splits as uint8 N x 32 x 32 x 3 (RGB, HWC) with int64 labels."""
    folder, fmt = _find_dir(Path(raw_dir), cifar_format)
    suffix = ".bin" if fmt == "binary" else ""
    reader = _binary_batch if fmt == "binary" else _python_batch
    names, meta_bytes, meta_name = _label_names(folder, fmt)
    files = [(meta_name, meta_bytes)]
    splits, segments = {}, {}
    for split, batches in (("train", TRAIN_BATCHES), ("test", (TEST_BATCH,))):
        parts = []
        for batch in batches:
            path = folder / f"{batch}{suffix}"
            data = _read(path)
            files.append((path.name, data))
            parts.append(reader(path, data))
        pixels = np.concatenate([p for p, _ in parts])
        # Channel-major planes -> N x 3 x 32 x 32 -> HWC, the layout every other source uses.
        images = np.ascontiguousarray(pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        splits[split] = (images, np.concatenate([l for _, l in parts]))
        segments[split] = [(f"{b}{suffix}", len(l)) for b, (_, l) in zip(batches, parts)]
    return ArraySource(name="cifar10", splits=splits, class_names=names,
                       checksum_sha256=digest_files(files), checksums_verified=False,
                       info={"format": f"cifar-{fmt}", "raw_dir": str(folder.resolve())},
                       segments=segments)
