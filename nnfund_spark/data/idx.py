"""MNIST-format IDX files: read (raw or .gz), verify, and download from the canonical mirrors.

Checksums are SHA-256 of the *decompressed* bytes, so the same entry verifies a raw file, the
upstream .gz and a re-compressed .gz (Debian's Fashion-MNIST package recompresses its files).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# IDX type codes (http://yann.lecun.com/exdb/mnist/ "THE IDX FILE FORMAT").
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class IdxSource:
    """One IDX dataset: file stems, where to download them, and their content checksums."""
    name: str
    mirrors: tuple[str, ...]
    sha256: dict  # stem -> sha256 of the decompressed file
    class_names: tuple[str, ...]


_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

SOURCES = {
    "mnist": IdxSource(
        name="mnist",
        mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        class_names=tuple(str(d) for d in range(10)),
    ),
    "fashion_mnist": IdxSource(
        name="fashion_mnist",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
}


class DataSourceError(ValueError):
    """Raw input is missing, corrupt or not what the source expects; names the file."""


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt deflate stream
        raise DataSourceError(f"{path}: cannot read ({exc})") from exc


def parse_idx(data: bytes, origin: str = "<bytes>") -> np.ndarray:
    """Decode an IDX buffer into an ndarray, checking the header against the payload size."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataSourceError(f"{origin}: not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataSourceError(f"{origin}: unknown IDX element type 0x{type_code:02x}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DataSourceError(f"{origin}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise DataSourceError(f"{origin}: IDX header says shape {shape} ({expected} bytes) but "
                              f"the file holds {len(data) - header_end} bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)


def find_file(raw_dir: Path, stem: str) -> Path | None:
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def download(source: IdxSource, raw_dir: Path) -> None:
    """Fetch any missing file of `source` into raw_dir, verifying its checksum before keeping it."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for stem in _STEMS:
        if find_file(raw_dir, stem) is not None:
            continue
        errors = []
        for mirror in source.mirrors:
            url = f"{mirror}{stem}.gz"
            handle, tmp = tempfile.mkstemp(dir=raw_dir, prefix=f".{stem}.", suffix=".part")
            os.close(handle)
            try:
                log.info("downloading %s", url)
                with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
                verify(Path(tmp), stem, source, display=url, gz=True)
                os.replace(tmp, raw_dir / f"{stem}.gz")
                break
            except (OSError, DataSourceError) as exc:
                errors.append(f"{url}: {exc}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise DataSourceError(f"could not download {stem} for {source.name}: " + "; ".join(errors))


def verify(path: Path, stem: str, source: IdxSource, display: str | None = None,
           gz: bool | None = None) -> bytes:
    """Return the decompressed bytes of path after checking them against the known checksum."""
    if gz is None:
        gz = path.suffix == ".gz"
    try:
        data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataSourceError(f"{display or path}: cannot read ({exc})") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256[stem]:
        raise DataSourceError(f"{display or path}: checksum mismatch for {source.name} {stem} "
                              f"(sha256 {digest}, expected {source.sha256[stem]})")
    return data


def read_idx_files(source_name: str, raw_dir: str | Path, download_missing: bool = False,
                   check: bool = True) -> dict:
    """The four decompressed IDX files of a source as {stem: (path, bytes)}.

    With check=True each must match the published content (partial files, `limit`-ed copies
    and other data sets fail); check=False accepts any MNIST-format files.
    """
    if source_name not in SOURCES:
        raise DataSourceError(f"unknown IDX source '{source_name}'; accepted: {', '.join(SOURCES)}")
    source = SOURCES[source_name]
    raw_dir = Path(raw_dir)
    if download_missing:
        download(source, raw_dir)
    if not raw_dir.is_dir():
        raise DataSourceError(f"raw data directory not found: {raw_dir} (expected the four "
                              f"{source_name} IDX files there; set data.download=true to fetch them)")
    files = {}
    for stem in _STEMS:
        path = find_file(raw_dir, stem)
        if path is None:
            raise DataSourceError(f"{raw_dir}: missing {stem} (or {stem}.gz) for {source_name}")
        files[stem] = (path, verify(path, stem, source) if check else _read_bytes(path))
    return files


def load_idx_dataset(source_name: str, raw_dir: str | Path, download_missing: bool = False,
                     check: bool = True) -> dict:
    """Load an IDX source as {'train': (images, labels), 'test': (images, labels), ...}.

    Images come back as uint8 (N, 28, 28, 1); labels as int64 (N,). See read_idx_files for
    `check`. Labels are not range-checked here (prepare treats out-of-range ones as bad items).
    """
    files = read_idx_files(source_name, raw_dir, download_missing, check)
    arrays = {stem: parse_idx(data, str(path)) for stem, (path, data) in files.items()}
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"].astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataSourceError(f"{raw_dir}: {prefix} images {images.shape} and labels "
                                  f"{labels.shape} do not match")
        splits[split] = (images[..., np.newaxis], labels)
    splits["class_names"] = list(SOURCES[source_name].class_names)
    return splits
