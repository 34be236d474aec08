"""Bad input, each case: fail by default naming the first items and the count, skip and list
them up to data.max_bad_fraction, fail above it; whole-source problems always fail; nothing
that looks like a dataset is left behind by a failure."""
import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from nnfund_spark.config import DataConfig
from nnfund_spark.data.bad_input import BadInputError, BadItem, check_bad_items
from nnfund_spark.data.idx import DataSourceError
from nnfund_spark.data.prepare import prepare_dataset
from tests.test_prepare import read_split
from tests.test_sources import cifar_arrays, write_cifar_python


def png_bytes(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def exif_broken_jpeg(array):
    """A real JPEG whose EXIF block makes Pillow raise struct.error (not OSError/ValueError) when
    the photo is turned upright: its Make entry (0x010F, text) is retagged TileOffsets
    (0x0144, numbers), so re-packing the block meets text where numbers belong."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6        # orientation: turn 90 degrees (so the EXIF block is re-packed)
    exif[0x010F] = "cam"    # Make
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    entry = b"\x01\x0f\x00\x02"  # big-endian EXIF entry: tag 0x010F, type 2 (ASCII)
    data = buffer.getvalue()
    assert data.count(entry) == 1
    return data.replace(entry, b"\x01\x44\x00\x02")


# file -> the reason it must be reported with (None: a good image)
BAD = {
    "cat/corrupt.jpg": "corrupt or truncated",          # random bytes
    "cat/truncated.jpg": "corrupt or truncated",        # first half of a real JPEG
    "dog/truncated.png": "corrupt or truncated",        # first half of a real PNG
    "dog/empty.png": "empty file",                      # zero bytes
    "dog/anim.gif": "unsupported format",               # a real GIF, by extension
    "cat/notes.txt": "unsupported format",
    "dog/fake.png": "unsupported format",               # a GIF named .png, by content
    "README.md": "not in a class folder",
    "cat/gray.png": "wrong channel count",              # 1 channel among 3-channel images
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy") / "images"
    rng = np.random.default_rng(0)
    for name in ("bird", "cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            array = rng.integers(0, 256, (24, 20 + i, 3), dtype=np.uint8)
            (root / name / f"ok{i}.png").write_bytes(png_bytes(array))
    photo = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    contents = {
        "cat/corrupt.jpg": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "cat/truncated.jpg": png_bytes(photo, "JPEG")[:800],
        "dog/truncated.png": png_bytes(photo)[:2000],
        "dog/empty.png": b"",
        "dog/anim.gif": png_bytes(photo, "GIF"),
        "cat/notes.txt": b"labels are folder names",
        "dog/fake.png": png_bytes(photo, "GIF"),
        "README.md": b"my dataset",
        "cat/gray.png": png_bytes(photo[..., 0]),
    }
    for rel, data in contents.items():
        (root / rel).write_bytes(data)
    (root / ".DS_Store").write_bytes(b"\0\1")            # hidden files are ignored, not bad
    (root / "cat" / ".hidden.png").write_bytes(b"\0\1")
    return root


def config_for(root, out, **kwargs):
    return DataConfig(source="image_folder", raw_dir=str(root), output_dir=str(out),
                      image_size=[16, 16], **kwargs)


def test_default_fails_naming_items_and_leaves_nothing(spark, messy, tmp_path):
    with pytest.raises(BadInputError) as err:
        prepare_dataset(spark, config_for(messy, tmp_path / "ds"))
    message = str(err.value)
    assert message.startswith("9 of 27 files in ") and "data.max_bad_fraction=0 allows none" in message
    first_five = sorted(str(messy / rel) for rel in BAD)[:5]
    for path in first_five:
        assert path in message
    assert "and 4 more" in message
    assert f"{messy / 'cat' / 'gray.png'}: wrong channel count (1 channel(s)" in message
    assert list(tmp_path.iterdir()) == []  # no dataset, no staging directory


def test_skips_up_to_max_bad_fraction_and_lists_them(spark, messy, tmp_path):
    out = tmp_path / "ds"
    manifest = prepare_dataset(spark, config_for(messy, out, max_bad_fraction=0.34))
    skipped = manifest["skipped"]
    assert skipped["count"] == 9 and skipped["of_total"] == 27
    assert {i["item"]: i["reason"] for i in skipped["items"]} == \
        {str(messy / rel): reason for rel, reason in BAD.items()}
    assert skipped["by_reason"] == {"corrupt or truncated": 3, "empty file": 1,
                                    "not in a class folder": 1, "unsupported format": 3,
                                    "wrong channel count": 1}
    assert "content is GIF" in {i["item"]: i["detail"] for i in skipped["items"]}[
        str(messy / "dog/fake.png")]
    total = sum(manifest["splits"][s]["count"] for s in ("train", "validation", "test"))
    assert total == 18 and manifest["image_shape"] == [16, 16, 3]
    index, images, labels = read_split(out / "train")
    assert images.shape[1:] == (16, 16, 3)


def test_above_max_bad_fraction_fails():
    bad = [BadItem(f"f{i}", "empty file", "0 bytes") for i in range(3)]
    check_bad_items(bad, 10, 0.3, "files")             # exactly at the limit: allowed
    with pytest.raises(BadInputError, match=r"3 of 10 files are bad \(30.00%; empty file: 3; "
                                            r"above data.max_bad_fraction=0.29\): f0: empty file"):
        check_bad_items(bad, 10, 0.29, "files")
    check_bad_items([], 0, 0.0, "files")               # nothing bad: nothing to say


def test_skipped_summary_counts_everything_and_lists_a_bounded_sorted_sample(monkeypatch):
    from nnfund_spark.data import bad_input

    monkeypatch.setattr(bad_input, "MAX_LISTED", 3)
    bad = [BadItem(f"dir/f{i}", "corrupt or truncated" if i % 2 else "empty file", "why")
           for i in (4, 0, 3, 1, 2)]
    summary = bad_input.skipped_summary(bad, 100, 0.1)
    assert summary["count"] == 5 and summary["of_total"] == 100
    assert summary["by_reason"] == {"corrupt or truncated": 2, "empty file": 3}
    assert [i["item"] for i in summary["items"]] == ["dir/f0", "dir/f1", "dir/f2"]
    assert summary["items_truncated"] is True
    monkeypatch.setattr(bad_input, "MAX_LISTED", 5)
    assert bad_input.skipped_summary(bad, 100, 0.1)["items_truncated"] is False


def test_unexpected_decoder_exception_is_a_named_corrupt_file(spark, tmp_path):
    """A file on which the decoder raises something other than OSError/ValueError (here a real
    JPEG with a malformed EXIF block: struct.error) is one corrupt file, named with the
    exception's type, not a failed job that names no file."""
    root = tmp_path / "images"
    rng = np.random.default_rng(5)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            array = rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)
            (root / name / f"ok{i}.png").write_bytes(png_bytes(array))
    broken = root / "a" / "broken_exif.jpg"
    broken.write_bytes(exif_broken_jpeg(rng.integers(0, 256, (20, 18, 3), dtype=np.uint8)))
    with pytest.raises(BadInputError, match=rf"1 of 11 files in .* are bad .*"
                                            rf"{re.escape(str(broken))}: corrupt or truncated "
                                            rf"\(cannot decode: struct\.error: "):
        prepare_dataset(spark, config_for(root, tmp_path / "ds"))
    manifest = prepare_dataset(spark, config_for(root, tmp_path / "ds", max_bad_fraction=0.1))
    assert [(i["item"], i["reason"]) for i in manifest["skipped"]["items"]] == \
        [(str(broken), "corrupt or truncated")]
    assert manifest["skipped"]["items"][0]["detail"].startswith("cannot decode: struct.error: ")
    assert sum(manifest["splits"][s]["count"] for s in ("train", "validation", "test")) == 10


def test_class_without_usable_images_fails(spark, tmp_path):
    root = tmp_path / "images"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    (root / "b" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match=r"no usable images in class folder\(s\) b"):
        prepare_dataset(spark, config_for(root, tmp_path / "ds", max_bad_fraction=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_source_level_problems_always_fail(spark, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(DataSourceError, match="image folder not found: .*nowhere"):
        prepare_dataset(spark, config_for(tmp_path / "nowhere", out, max_bad_fraction=0.9))
    root = tmp_path / "images"
    root.mkdir()
    with pytest.raises(DataSourceError, match=r"no class folders \(empty source\)"):
        prepare_dataset(spark, config_for(root, out))
    (root / "a").mkdir()
    (root / "empty_class").mkdir()
    (root / "a" / "x.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(DataSourceError, match=r"empty class folder\(s\) empty_class"):
        prepare_dataset(spark, config_for(root, out, max_bad_fraction=0.9))
    with pytest.raises(DataSourceError, match="is a file; data.raw_dir must be a folder"):
        prepare_dataset(spark, config_for(root / "a" / "x.png", out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


@pytest.fixture
def mnist_with_bad_labels(mnist_raw_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for path in mnist_raw_dir.iterdir():
        shutil.copy(path, raw / path.name)
    for name, row, value in (("t10k-labels-idx1-ubyte", 0, 11), ("train-labels-idx1-ubyte", 5, 10)):
        data = bytearray((raw / name).read_bytes())
        data[8 + row] = value  # 8-byte IDX header, then one byte per label
        (raw / name).write_bytes(bytes(data))
    return raw


def test_idx_labels_out_of_range(spark, mnist_with_bad_labels, tmp_path):
    raw, out = mnist_with_bad_labels, tmp_path / "ds"
    config = DataConfig(raw_dir=str(raw), output_dir=str(out), limit=200)
    with pytest.raises(DataSourceError, match="checksum mismatch"):  # published files: verified
        prepare_dataset(spark, config)
    config.verify_checksums = False
    with pytest.raises(BadInputError) as err:
        prepare_dataset(spark, config)
    assert str(err.value).startswith("2 of 400 mnist images are bad")
    assert "t10k-labels-idx1-ubyte[0]: label out of range (label 11; accepted: 0..9)" in str(err.value)
    assert "train-labels-idx1-ubyte[5]: label out of range (label 10" in str(err.value)
    assert not out.exists()

    config.max_bad_fraction = 0.01
    manifest = prepare_dataset(spark, config)
    assert [i["item"] for i in manifest["skipped"]["items"]] == [
        "t10k-labels-idx1-ubyte[0]", "train-labels-idx1-ubyte[5]"]
    assert manifest["source"]["checksums_verified"] is False
    assert manifest["splits"]["test"]["count"] == 199
    index, _, labels = read_split(out / "test")
    assert 0 not in index and labels.max() <= 9
    train_index = np.concatenate([read_split(out / s)[0] for s in ("train", "validation")])
    assert len(train_index) == 199 and 5 not in train_index


def test_cifar_label_out_of_range_names_batch_and_row(spark, tmp_path):
    train, test = cifar_arrays()
    train[1][1][3] = 10
    write_cifar_python(tmp_path / "raw", train, test)
    with pytest.raises(BadInputError, match=r"1 of 80 cifar10 images are bad .*"
                                            r"data_batch_2\[3\]: label out of range \(label 10; "
                                            r"accepted: 0\.\.9\)"):
        prepare_dataset(spark, DataConfig(source="cifar10", raw_dir=str(tmp_path / "raw"),
                                          output_dir=str(tmp_path / "ds")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
