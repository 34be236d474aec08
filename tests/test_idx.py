"""IDX reading and checksum-verified download, on the real MNIST files."""
import gzip
import shutil
from dataclasses import replace

import numpy as np
import pytest

from nnfund_spark.data import idx
from nnfund_spark.data.idx import DataSourceError, load_idx_dataset, parse_idx


def test_real_mnist_loads_with_published_statistics(mnist_raw_dir):
    data = load_idx_dataset("mnist", mnist_raw_dir)
    train_images, train_labels = data["train"]
    test_images, test_labels = data["test"]
    assert train_images.shape == (60000, 28, 28, 1) and train_images.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28, 1)
    assert test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    pixels = train_images / 255.0
    assert pixels.mean() == pytest.approx(0.1307, abs=1e-4)
    assert pixels.std() == pytest.approx(0.3081, abs=1e-4)
    assert np.bincount(train_labels).tolist()[:2] == [5923, 6742]


def test_truncated_file_is_named(tmp_path, mnist_raw_dir):
    data = (mnist_raw_dir / "t10k-labels-idx1-ubyte").read_bytes()
    with pytest.raises(DataSourceError, match="truncated or corrupt"):
        parse_idx(data[:-3], "labels")
    with pytest.raises(DataSourceError, match="bad magic"):
        parse_idx(b"\x01\x02\x03\x04", "junk")


def test_checksum_mismatch_names_the_file(tmp_path, mnist_raw_dir):
    for path in mnist_raw_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10
    labels.write_bytes(bytes(raw))
    with pytest.raises(DataSourceError) as err:
        load_idx_dataset("mnist", tmp_path)
    assert "t10k-labels-idx1-ubyte: checksum mismatch" in str(err.value)


def test_gz_and_missing_files(tmp_path, mnist_raw_dir):
    for path in mnist_raw_dir.iterdir():
        (tmp_path / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), 1))
    assert load_idx_dataset("mnist", tmp_path)["test"][1][:3].tolist() == [7, 2, 1]
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataSourceError, match="missing train-labels-idx1-ubyte"):
        load_idx_dataset("mnist", tmp_path)
    with pytest.raises(DataSourceError, match="unknown IDX source 'cifar'; accepted: mnist"):
        load_idx_dataset("cifar", tmp_path)


def test_corrupt_deflate_stream_is_named(tmp_path, mnist_raw_dir):
    """A .gz whose compressed bytes are damaged (zlib's error, not gzip's) is a bad-input
    error naming the file, verified or not, like a truncated one."""
    for path in mnist_raw_dir.iterdir():
        (tmp_path / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), 1))
    damaged = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(damaged.read_bytes())
    raw[20:60] = bytes(b ^ 0xFF for b in raw[20:60])
    damaged.write_bytes(bytes(raw))
    for check in (True, False):
        with pytest.raises(DataSourceError, match=r"train-images-idx3-ubyte.gz: cannot read"):
            idx.read_idx_files("mnist", tmp_path, check=check)


def test_download_verifies_and_caches(tmp_path, mnist_raw_dir, monkeypatch):
    """The real download code, pointed at a local mirror (no internet here)."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for path in mnist_raw_dir.iterdir():
        (mirror / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes(), 1))
    source = replace(idx.SOURCES["mnist"], mirrors=("file:///nonexistent/", mirror.as_uri() + "/"))
    monkeypatch.setitem(idx.SOURCES, "mnist", source)
    cache = tmp_path / "cache"
    data = load_idx_dataset("mnist", cache, download_missing=True)
    assert data["test"][1][:5].tolist() == [7, 2, 1, 0, 4]
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name + ".gz" for p in mnist_raw_dir.iterdir())

    # A mirror serving corrupt data: nothing is kept, the error names URL and checksum.
    bad_cache = tmp_path / "bad_cache"
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 8))
    monkeypatch.setitem(idx.SOURCES, "mnist", replace(source, mirrors=(mirror.as_uri() + "/",)))
    with pytest.raises(DataSourceError) as err:
        load_idx_dataset("mnist", bad_cache, download_missing=True)
    assert "t10k-labels-idx1-ubyte.gz: checksum mismatch" in str(err.value)
    assert not (bad_cache / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in bad_cache.iterdir() if p.name.endswith(".part")]


def test_unverified_read_accepts_other_mnist_format_files(tmp_path, mnist_raw_dir):
    """check=False (data.verify_checksums=false) reads any MNIST-format IDX files as they are."""
    for path in mnist_raw_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8] = 3
    labels.write_bytes(bytes(raw))
    files = idx.read_idx_files("mnist", tmp_path, check=False)
    assert sorted(files) == sorted(idx.SOURCES["mnist"].sha256)
    assert load_idx_dataset("mnist", tmp_path, check=False)["test"][1][0] == 3
