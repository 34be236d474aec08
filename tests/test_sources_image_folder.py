"""Image folders through the Spark job: generated JPEG/PNG files of many sizes and modes, class
names -> sorted labels, conversion and resizing on the executors, nothing but metadata on the
driver."""
import hashlib
import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nnfund_spark.config import DataConfig
from nnfund_spark.data.images import decode_image
from nnfund_spark.data.prepare import prepare_dataset
from tests.test_pipeline import assert_shards_match_petastorm
from tests.test_prepare import read_split

CLASSES = ["cat", "dog", "T-shirt top"]  # sorted: "T-shirt top" (capital T) comes first


def make_folder(root, per_class=8, seed=0):
    """root/<class>/..., sizes 20x30 upward, PNG/JPEG/.JPEG, RGB, RGBA, gray, palette, nested.
    Returns {relative path: original RGB(A)/L array}."""
    rng = np.random.default_rng(seed)
    files = {}
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            shape = (20 + 3 * i, 30 + 2 * c)
            rel = f"{name}/img{i:02d}" + (".png", ".jpg", ".JPEG", ".png")[i % 4]
            if i == 5:
                rel = f"{name}/nested/deeper{i:02d}.png"  # files below a class folder count too
            array = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
            image = Image.fromarray(array)
            if i == 3:
                image = image.convert("RGBA")
            elif i == 6:
                image = image.convert("L")  # a grayscale JPEG
            elif i == 7:
                image = image.convert("P")
            elif i == 4:  # exactly the target size: no resize, so the bytes must survive as is
                array = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                image = Image.fromarray(array)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, "PNG" if rel.endswith(".png") else "JPEG")
            files[rel] = np.asarray(image)
    return files


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "images"
    return root, make_folder(root)


def test_image_folder_rgb_round_trip(spark, folder, tmp_path, monkeypatch):
    from pyspark.rdd import RDD
    from pyspark.sql import DataFrame

    root, files = folder
    collected, frames = [], []
    real_rdd_collect, real_df_collect = RDD.collect, DataFrame.collect

    def rdd_collect(self):
        result = real_rdd_collect(self)
        collected.append(len(pickle.dumps(result)))
        return result

    def df_collect(self):
        frames.append(self.columns)
        return real_df_collect(self)

    monkeypatch.setattr(RDD, "collect", rdd_collect)
    monkeypatch.setattr(DataFrame, "collect", df_collect)
    out = tmp_path / "ds"
    config = DataConfig(source="image_folder", raw_dir=str(root), output_dir=str(out),
                        image_size=[12, 10], color_mode="rgb")
    manifest = prepare_dataset(spark, config)

    # Only metadata reached the driver: no pixel or file-content column, ~100 B per file.
    assert all("content" not in cols and "image" not in cols for cols in frames)
    assert sum(collected) < 400 * len(files)
    names = sorted(files)  # Spark's listing order: index = position among all listed files
    assert manifest["class_names"] == sorted(CLASSES) == ["T-shirt top", "cat", "dog"]
    assert manifest["source"]["label_order"] == "sorted class-folder names"
    assert manifest["image_shape"] == [12, 10, 3] and manifest["test_split"] == "stratified"
    seen, train_pixels = [], None
    for split in ("train", "validation", "test"):
        index, images, labels = read_split(out / split)
        for i, image, label in zip(index, images, labels):
            rel = names[i]
            assert manifest["class_names"][label] == rel.split("/")[0]
            expected = decode_image((root / rel).read_bytes(), "rgb", (12, 10))
            np.testing.assert_array_equal(image, expected)
            if rel.endswith("img04.png"):
                np.testing.assert_array_equal(image, files[rel])        # untouched pixels
            if rel.endswith("img06.JPEG"):                            # gray -> rgb: R = G = B
                assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
        info = manifest["splits"][split]
        rows_per_file = [pq.read_metadata(f).num_rows for f in (out / split).glob("*.parquet")]
        assert info["row_groups"] == info["files"] == len(rows_per_file)
        # enough row groups for 16 Horovod ranks, and even ones (repartitioned, not coalesced)
        assert info["files"] == min(16, info["count"])
        assert max(rows_per_file) - min(rows_per_file) <= 1
        seen.append(index)
        if split == "train":
            train_pixels = images.reshape(-1, 3) / 255.0
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(files)))
    for name in CLASSES:  # 8 per class: 2 to test (20%), then 1 of the remaining 6 to validation
        assert manifest["splits"]["test"]["per_class"][name] == 2
        assert manifest["splits"]["validation"]["per_class"][name] == 1
    assert manifest["train_channel_mean"] == pytest.approx(train_pixels.mean(axis=0), abs=1e-6)
    assert manifest["train_channel_std"] == pytest.approx(train_pixels.std(axis=0), abs=1e-6)
    # the checksum covers every used file's path and content, in index order
    digest = hashlib.sha256()
    for rel in names:
        digest.update(f"{rel}:{hashlib.sha256((root / rel).read_bytes()).hexdigest()}\n".encode())
    assert manifest["source"]["checksum_sha256"] == digest.hexdigest()
    # each of 2 ranks reads its own shard of even the smallest split, RGB pixels as Petastorm
    # decodes them
    assert_shards_match_petastorm(out / "validation", 2)


def test_image_folder_grayscale_ndarray_limit(spark, folder, tmp_path):
    root, files = folder
    out = tmp_path / "gray"
    config = DataConfig(source="image_folder", raw_dir=str(root), output_dir=str(out),
                        image_size=[16, 16], color_mode="grayscale", image_codec="ndarray",
                        limit=4, validation_fraction=0.0, seed=3)
    manifest = prepare_dataset(spark, config)
    names = sorted(files)
    first_four = {n for c in CLASSES for n in sorted(r for r in names if r.startswith(c + "/"))[:4]}
    seen = []
    for split in ("train", "test"):
        index, images, labels = read_split(out / split)
        assert images.shape[1:] == (16, 16, 1)  # ndarray codec keeps H x W x 1
        for i, image in zip(index, images):
            expected = decode_image((root / names[i]).read_bytes(), "grayscale", (16, 16))
            np.testing.assert_array_equal(image, expected)
        seen += [names[i] for i in index]
    assert set(seen) == first_four
    assert_shards_match_petastorm(out / "train", 2)  # the ndarray codec, decoded as Petastorm does
    assert manifest["splits"]["validation"]["count"] == 0
    assert manifest["splits"]["validation"]["row_groups"] == 0  # valid, empty dataset
    assert manifest["image_shape"] == [16, 16, 1] and manifest["color_mode"] == "grayscale"


def test_output_dir_with_space_non_ascii_and_percent(spark, folder, tmp_path):
    """Spark gets the output as an unencoded path: a percent-encoded file:// URI would make
    Hadoop write into a literal 'my%20data' directory the driver never finds."""
    root, files = folder
    parent = tmp_path / "my data é 100%"
    out = parent / "ds"
    manifest = prepare_dataset(spark, DataConfig(source="image_folder", raw_dir=str(root),
                                                 output_dir=str(out), image_size=[12, 10],
                                                 color_mode="rgb"))
    total = 0
    for split in ("train", "validation", "test"):
        rows = sum(pq.read_metadata(f).num_rows for f in (out / split).glob("*.parquet"))
        assert rows == manifest["splits"][split]["count"] > 0
        assert (out / split / "_common_metadata").is_file()
        total += rows
    assert total == len(files)
    assert [p.name for p in tmp_path.iterdir()] == ["my data é 100%"]  # nothing stray
    assert [p.name for p in parent.iterdir()] == ["ds"]                # no staging left
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test", "train",
                                                      "validation"]


def test_rows_the_driver_cannot_see_fail_and_leave_nothing(spark, folder, tmp_path, monkeypatch):
    """Executors that write the splits where the driver cannot see them (output_dir on a disk
    of their own) give an error naming the split, both counts and the cause, not an empty
    dataset whose manifest claims rows; the staging directory is removed."""
    from nnfund_spark.data import storage
    from nnfund_spark.data.writer import MissingRowsError

    root, _ = folder
    elsewhere = tmp_path / "executor_disk"  # stands in for each executor's own disk
    monkeypatch.setattr(storage.Location, "spark_uri",
                        property(lambda self: f"file://{elsewhere}/{self.name}"))
    out = tmp_path / "ds"
    with pytest.raises(MissingRowsError, match=r"split 'train': the driver finds 0 rows in .* but "
                                               r"15 were written; the executors most likely "
                                               r"wrote .* data.output_dir must be one location "
                                               r"shared by the driver and every executor"):
        prepare_dataset(spark, DataConfig(source="image_folder", raw_dir=str(root),
                                          output_dir=str(out), image_size=[12, 10],
                                          color_mode="rgb"))
    assert [p.name for p in tmp_path.iterdir()] == ["executor_disk"]  # no dataset, no staging
