"""Every source through the Spark job: CIFAR-10 (both official formats, generated here), digits,
real Fashion-MNIST, image folders (generated JPEG/PNG of any size)."""
import pickle

import numpy as np
import pytest

from nnfund_spark.config import DataConfig
from nnfund_spark.data.idx import DataSourceError, load_idx_dataset
from nnfund_spark.data.prepare import prepare_dataset
from nnfund_spark.data.sources.cifar import load_cifar10
from tests.test_prepare import read_split

REPO_FASHION = __import__("pathlib").Path(__file__).resolve().parents[1] / "data/raw/fashion_mnist"
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def cifar_arrays(seed=0, per_batch=12, test=20):
    """Random HWC images and labels: five training batches and a test batch."""
    rng = np.random.default_rng(seed)
    make = lambda n: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                      rng.integers(0, 10, n).astype(np.int64))
    return [make(per_batch) for _ in range(5)], make(test)


def planes(images):
    """The official row layout, written out independently of the reader: all 1024 red values
    (row-major), then all green, then all blue."""
    n = len(images)
    return np.concatenate([images[..., c].reshape(n, 1024) for c in range(3)], axis=1)


def write_cifar_python(folder, train, test, names=CIFAR_NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i + 1}", b) for i, b in enumerate(train)] + [("test_batch", test)]
    for name, (images, labels) in batches:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                 b"data": planes(images), b"filenames": [b"x.png"] * len(labels)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [n.encode() for n in names], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_cifar_binary(folder, train, test, names=CIFAR_NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{i + 1}.bin", b) for i, b in enumerate(train)]
    for name, (images, labels) in batches + [("test_batch.bin", test)]:
        records = np.concatenate([labels.astype(np.uint8)[:, None], planes(images)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")


def test_cifar_both_formats_load_identically(tmp_path):
    train, test = cifar_arrays()
    write_cifar_python(tmp_path / "py" / "cifar-10-batches-py", train, test)
    write_cifar_binary(tmp_path / "bin", train, test)
    py = load_cifar10(tmp_path / "py")            # found in the archive's folder, format auto
    binary = load_cifar10(tmp_path / "bin", "binary")
    images = np.concatenate([im for im, _ in train])
    for source in (py, binary):
        np.testing.assert_array_equal(source.splits["train"][0], images)
        np.testing.assert_array_equal(source.splits["test"][0], test[0])
        np.testing.assert_array_equal(source.splits["train"][1], np.concatenate([l for _, l in train]))
        assert source.class_names == CIFAR_NAMES
    assert py.info["format"] == "cifar-python" and binary.info["format"] == "cifar-binary"
    assert py.item_name("train", 27) == "data_batch_3[3]"
    assert binary.item_name("test", 4) == "test_batch.bin[4]"
    with pytest.raises(DataSourceError, match=r"data_batch_1\.bin \(binary format\)"):
        load_cifar10(tmp_path / "py", "binary")


def test_cifar_bad_files_are_named(tmp_path):
    train, test = cifar_arrays()
    write_cifar_binary(tmp_path / "bin", train, test)
    cut = tmp_path / "bin" / "data_batch_2.bin"
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(DataSourceError, match=r"data_batch_2\.bin: .* not a whole number of "
                                              r"3073-byte records"):
        load_cifar10(tmp_path / "bin")
    write_cifar_python(tmp_path / "py", train, test)
    (tmp_path / "py" / "test_batch").unlink()
    with pytest.raises(DataSourceError, match="missing test_batch"):
        load_cifar10(tmp_path / "py")
    # Unpickling runs code: a batch that asks for anything but numpy arrays is refused.
    evil = tmp_path / "py" / "data_batch_4"
    evil.write_bytes(b"cos\nsystem\n(S'echo owned'\ntR.")
    with pytest.raises(DataSourceError, match=r"data_batch_4: not a readable CIFAR-10 pickle "
                                              r"\(refusing to load os\.system"):
        load_cifar10(tmp_path / "py")
    truncated = tmp_path / "py" / "data_batch_4"
    truncated.write_bytes((tmp_path / "py" / "data_batch_5").read_bytes()[:500])
    with pytest.raises(DataSourceError, match="data_batch_4: not a readable CIFAR-10 pickle"):
        load_cifar10(tmp_path / "py")
    with pytest.raises(DataSourceError, match="raw data directory not found"):
        load_cifar10(tmp_path / "nowhere")


@pytest.mark.parametrize("fmt,codec", [("python", "png"), ("binary", "ndarray")])
def test_cifar_round_trip_is_exact(spark, tmp_path, fmt, codec):
    train, test = cifar_arrays(seed=1)
    (write_cifar_python if fmt == "python" else write_cifar_binary)(tmp_path / "raw", train, test)
    out = tmp_path / "ds"
    manifest = prepare_dataset(spark, DataConfig(source="cifar10", raw_dir=str(tmp_path / "raw"),
                                                 cifar_format=fmt, output_dir=str(out),
                                                 image_codec=codec))
    pools = {"train": (np.concatenate([im for im, _ in train]),
                       np.concatenate([l for _, l in train])), "test": test}
    for split, pool in (("train", "train"), ("validation", "train"), ("test", "test")):
        index, images, labels = read_split(out / split)
        assert images.shape[1:] == (32, 32, 3)
        np.testing.assert_array_equal(images, pools[pool][0][index])   # pixel-exact, HWC, RGB
        np.testing.assert_array_equal(labels, pools[pool][1][index])
    assert manifest["image_shape"] == [32, 32, 3] and manifest["class_names"] == CIFAR_NAMES
    assert manifest["source"]["format"] == f"cifar-{fmt}" and manifest["test_split"] == "official"
    assert manifest["splits"]["test"]["count"] == 20
    assert len(manifest["train_channel_mean"]) == 3 and len(manifest["source"]["checksum_sha256"]) == 64


def test_digits_stratified_test_split(spark, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = tmp_path / "digits"
    manifest = prepare_dataset(spark, DataConfig(source="digits", output_dir=str(out)))
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    seen = []
    for split in ("train", "validation", "test"):
        index, images, labels = read_split(out / split)
        np.testing.assert_array_equal(images[..., 0], expected[index])
        np.testing.assert_array_equal(labels, digits.target[index])
        seen.append(index)
    assert sorted(np.concatenate(seen).tolist()) == list(range(1797))
    per_class = np.bincount(digits.target)
    assert manifest["test_split"] == "stratified" and manifest["test_fraction"] == 0.2
    assert list(manifest["splits"]["test"]["per_class"].values()) == [round(n * 0.2) for n in per_class]
    assert manifest["image_shape"] == [8, 8, 1] and expected.max() == 255


def test_real_fashion_mnist_gz(spark, tmp_path):
    if not (REPO_FASHION / "t10k-labels-idx1-ubyte.gz").exists():
        pytest.fail(f"real Fashion-MNIST is missing from {REPO_FASHION}: run "
                    f"`bash scripts/get_data.sh fashion_mnist`")
    out = tmp_path / "fashion"
    manifest = prepare_dataset(spark, DataConfig(source="fashion_mnist", raw_dir=str(REPO_FASHION),
                                                 output_dir=str(out), limit=500))
    raw = load_idx_dataset("fashion_mnist", REPO_FASHION)
    index, images, labels = read_split(out / "test")
    np.testing.assert_array_equal(images, raw["test"][0][index])
    np.testing.assert_array_equal(labels, raw["test"][1][index])
    assert manifest["class_names"][9] == "Ankle boot" and manifest["source"]["checksums_verified"]
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["validation"]["count"] == 500


def test_data_config_rejects_bad_values():
    from nnfund_spark.config import ConfigError, load_config

    config = load_config(None, ["data.source=image_folder", "data.image_size=[32, 48]",
                                "data.extensions=['.png']", "data.max_bad_fraction=0.05"])
    assert config.data.image_size == [32, 48] and config.data.extensions == [".png"]
    for override, message in (
            ("data.source=cifar100", "data.source: 'cifar100' is not one of mnist, "
                                     "fashion_mnist, cifar10, image_folder, digits"),
            ("data.color_mode=bgr", "data.color_mode: 'bgr' is not one of keep, grayscale, rgb"),
            ("data.cifar_format=tar", "data.cifar_format: 'tar' is not one of auto"),
            ("data.image_size=64", r"data.image_size: expected \[height, width\]"),
            ("data.image_size=[64, 0]", r"data.image_size: expected \[height, width\]"),
            ("data.extensions=[png]", "data.extensions: expected a non-empty list"),
            ("data.max_bad_fraction=1", r"data.max_bad_fraction: must be in \[0, 1\)"),
            ("data.test_fraction=-0.1", r"data.test_fraction: must be in \[0, 1\)")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="data.download: only mnist and fashion_mnist"):
        load_config(None, ["data.source=digits", "data.download=true"])


def test_decode_and_convert_rules():
    import io

    from PIL import Image

    from nnfund_spark.data.images import (ImageDecodeError, channel_histograms, convert_batch,
                                          decode_image, formats_for, stats_from_histograms)

    def encoded(image, fmt="PNG"):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        return buffer.getvalue()

    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    # Shrinking averages areas: a 24 x 20 image at 12 x 10 is the mean of each 2 x 2 block,
    # rounded (computed here with numpy, not with the code's own resize); RGB to grayscale is
    # ITU-R 601-2 luma.
    big = np.random.default_rng(1).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    blocks = big.reshape(12, 2, 10, 2, 3).astype(float).mean(axis=(1, 3))
    shrunk = decode_image(encoded(Image.fromarray(big)), "rgb", (12, 10))
    assert shrunk.shape == (12, 10, 3) and np.abs(shrunk - blocks).max() <= 0.5
    luma = big.astype(float) @ [0.299, 0.587, 0.114]
    gray = decode_image(encoded(Image.fromarray(big)), "grayscale")
    assert gray.shape == (24, 20, 1) and np.abs(gray[..., 0] - luma).max() <= 1.0
    rgba = Image.fromarray(rgb).convert("RGBA")
    np.testing.assert_array_equal(decode_image(encoded(rgba), "keep"), rgb)  # alpha dropped
    deep = np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000
    np.testing.assert_array_equal(decode_image(encoded(Image.fromarray(deep)), "keep")[..., 0],
                                  (deep >> 8).astype(np.uint8))              # 16-bit: top byte
    for mode in ("grayscale", "rgb"):  # ... whatever the colour mode (not clipped at 255)
        converted = decode_image(encoded(Image.fromarray(deep)), mode)
        assert (converted == (deep >> 8).astype(np.uint8)[..., None]).all(), mode
    # A photo whose EXIF orientation says "turn 90°" comes out turned (as viewers show it).
    wide = Image.fromarray(rgb).resize((40, 20))
    exif = wide.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    wide.save(buffer, "JPEG", exif=exif)
    assert decode_image(buffer.getvalue(), "keep").shape == (40, 20, 3)
    assert decode_image(encoded(wide, "JPEG"), "keep").shape == (20, 40, 3)
    # A grayscale image saved with a palette stays grayscale under "keep"; a colour one not.
    shades = Image.fromarray(np.arange(30, dtype=np.uint8).reshape(6, 5) * 8)
    from_palette = decode_image(encoded(shades.convert("P")), "keep")
    np.testing.assert_array_equal(from_palette, np.asarray(shades)[..., None])
    assert decode_image(encoded(Image.fromarray(rgb).convert("P")), "keep").shape == (6, 5, 3)
    # Past Pillow's decompression-bomb limit: "too large", not "corrupt"
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 10
    try:
        with pytest.raises(ImageDecodeError) as err:
            decode_image(encoded(Image.fromarray(rgb)), "keep")  # 30 pixels > 2 x 10
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    assert err.value.kind == "too large" and "above 20 pixels" in str(err.value)
    gray = decode_image(encoded(Image.fromarray(rgb)), "grayscale")
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    assert gray.shape == (6, 5, 1) and np.abs(gray[..., 0] - luma).max() <= 1
    assert decode_image(encoded(Image.fromarray(rgb)), "rgb", (3, 10)).shape == (3, 10, 3)
    with pytest.raises(ImageDecodeError, match="content is BMP; accepted: JPEG, PNG"):
        decode_image(encoded(Image.fromarray(rgb), "BMP"), "keep")
    # data.extensions decides which formats are accepted
    assert formats_for([".JPG", ".png"]) == ("JPEG", "MPO", "PNG")
    bmp = decode_image(encoded(Image.fromarray(rgb), "BMP"), "keep", formats=formats_for([".bmp"]))
    np.testing.assert_array_equal(bmp, rgb)
    with pytest.raises(ValueError, match=r"data.extensions: \.xyz is not an image format"):
        formats_for([".png", ".xyz"])
    # array sources: the same luma rule, batch-wise, and back to 3 equal channels
    batch = np.stack([rgb, rgb[::-1]])
    as_gray = convert_batch(batch, "grayscale")
    assert as_gray.shape == (2, 6, 5, 1) and np.abs(as_gray[0, ..., 0] - luma).max() <= 1
    assert (convert_batch(as_gray, "rgb") == as_gray).all() and convert_batch(batch, "keep") is batch
    mean, std = stats_from_histograms(channel_histograms(batch))
    assert mean == pytest.approx((batch / 255).reshape(-1, 3).mean(axis=0), abs=1e-6)
    assert std == pytest.approx((batch / 255).reshape(-1, 3).std(axis=0), abs=1e-6)


def test_rotated_jpeg_is_drafted_in_its_stored_orientation():
    """JPEG draft (decoding at 1/2..1/8 scale) takes the size as stored, before the EXIF turn:
    for orientations 5-8 the target's width and height swap. A tall photo stored turned by 90
    degrees, squeezed to 400 x 100: drafting with the unswapped size would decode it at 1/4 and
    blow 100 rows up to 400; it must equal the full decode, turned upright, then resized."""
    import io

    from PIL import Image, ImageOps

    from nnfund_spark.data.images import decode_image, resize

    stored = np.random.default_rng(2).integers(0, 256, (1600, 400, 3), dtype=np.uint8)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # turn 90 degrees: upright it is 1600 wide, 400 tall
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif, quality=95)
    content = buffer.getvalue()
    with Image.open(io.BytesIO(content)) as full:  # no draft: every pixel decoded
        upright = np.asarray(ImageOps.exif_transpose(full).convert("RGB"))
    assert upright.shape == (400, 1600, 3)
    expected = resize(upright, (400, 100))
    np.testing.assert_array_equal(decode_image(content, "rgb", (400, 100)), expected)


def test_any_decoder_exception_is_a_corrupt_item(monkeypatch):
    """Whatever a decoder raises on malformed content (struct.error, cv2.error, IndexError, ...)
    is ImageDecodeError "corrupt or truncated" with the exception's type and message."""
    import struct

    import cv2

    from nnfund_spark.data import images
    from nnfund_spark.data.images import ImageDecodeError, decode_image
    from tests.test_bad_input import exif_broken_jpeg, png_bytes

    array = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match=r"cannot decode: struct\.error: ") as err:
        decode_image(exif_broken_jpeg(array), "keep")  # a real file, no monkeypatching
    assert err.value.kind == "corrupt or truncated"
    assert isinstance(err.value.__cause__, struct.error)

    def broken_resize(image, size):
        raise cv2.error("OpenCV(4) resize.cpp: error: (-215:Assertion failed) (simulated)")

    monkeypatch.setattr(images, "resize", broken_resize)
    with pytest.raises(ImageDecodeError, match=r"cannot decode: cv2\.error: OpenCV\(4\)") as err:
        decode_image(png_bytes(array), "keep", (6, 5))
    assert err.value.kind == "corrupt or truncated"
