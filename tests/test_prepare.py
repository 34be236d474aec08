"""The Spark prepare job on real MNIST: exact round trip, deterministic splits, atomic output."""
import json

import numpy as np
import pytest

from nnfund_spark.config import DataConfig
from nnfund_spark.data.idx import load_idx_dataset
from nnfund_spark.data.prepare import OutputExistsError, prepare_dataset, stratified_split
from nnfund_spark.data.schema import as_hwc


def read_split(path):
    from petastorm import make_reader
    rows = []
    with make_reader(path.as_uri(), num_epochs=1, reader_pool_type="dummy") as reader:
        rows = [(r.index, r.image, r.label) for r in reader]
    rows.sort(key=lambda r: r[0])
    return (np.array([r[0] for r in rows]), as_hwc(np.stack([r[1] for r in rows])),
            np.array([r[2] for r in rows]))


def test_round_trip_is_exact(small_mnist, mnist_raw_dir):
    out, manifest = small_mnist
    raw = load_idx_dataset("mnist", mnist_raw_dir)
    train_images, train_labels = raw["train"]
    seen = []
    for split, source in (("train", "train"), ("validation", "train"), ("test", "test")):
        index, images, labels = read_split(out / split)
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
        np.testing.assert_array_equal(images, raw[source][0][index])
        np.testing.assert_array_equal(labels, raw[source][1][index])
        assert len(index) == manifest["splits"][split]["count"]
        if source == "train":
            seen.append(index)
    # train and validation partition the first 2,000 official training images
    assert sorted(np.concatenate(seen).tolist()) == list(range(2000))
    assert manifest["splits"]["test"]["count"] == 2000
    per_class = np.bincount(train_labels[:2000])
    assert manifest["splits"]["validation"]["count"] == sum(round(n * 0.1) for n in per_class)
    assert manifest["image_shape"] == [28, 28, 1]
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    kept = np.setdiff1d(np.arange(2000), seen[1])
    mean = train_images[kept].mean() / 255
    assert manifest["train_channel_mean"][0] == pytest.approx(mean, abs=1e-6)
    assert sum(manifest["splits"]["train"]["per_class"].values()) == len(kept)
    # several row groups per split, so two ranks each get a share
    assert manifest["splits"]["train"]["files"] >= 8


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [100, 120, 80, 100, 100, 90, 110, 100, 100, 100])
    keep, held = stratified_split(labels, 0.1, seed=7)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [10, 12, 8, 10, 10, 9, 11, 10, 10, 10]
    again_keep, again_held = stratified_split(labels, 0.1, seed=7)
    assert again_held.tobytes() == held.tobytes()
    assert stratified_split(labels, 0.1, seed=8)[1].tobytes() != held.tobytes()


def test_same_seed_same_membership_different_seed_differs(spark, mnist_raw_dir, small_mnist,
                                                          tmp_path):
    _, first = small_mnist
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(tmp_path / "again"),
                        limit=2000, image_codec="ndarray")
    again = prepare_dataset(spark, config)
    for split in ("train", "validation", "test"):
        assert again["splits"][split]["index_sha256"] == first["splits"][split]["index_sha256"]
    config.output_dir, config.seed = str(tmp_path / "other"), 43
    other = prepare_dataset(spark, config)
    assert other["splits"]["validation"]["index_sha256"] != first["splits"]["validation"]["index_sha256"]
    # the ndarray codec stores H x W x 1 as is
    index, images, labels = read_split(tmp_path / "again" / "test")
    assert images.shape == (2000, 28, 28, 1)


def test_existing_output_is_kept_unless_overwrite(spark, mnist_raw_dir, tmp_path):
    out = tmp_path / "ds"
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out), limit=300)
    first = prepare_dataset(spark, config)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        prepare_dataset(spark, config)
    config.overwrite, config.seed = True, 5
    second = prepare_dataset(spark, config)
    assert second["split_seed"] == 5
    assert json.loads((out / "manifest.json").read_text())["split_seed"] == 5
    assert first["created_at"] <= second["created_at"]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging or backup left


def test_failure_mid_write_leaves_nothing(spark, mnist_raw_dir, tmp_path, monkeypatch):
    import nnfund_spark.data.prepare as prepare

    calls = []
    real = prepare._write_split

    def fail_on_test_split(spark_, url, *args, **kwargs):
        calls.append(url)
        if url.endswith("/test"):
            raise RuntimeError("disk full (simulated)")
        return real(spark_, url, *args, **kwargs)

    monkeypatch.setattr(prepare, "_write_split", fail_on_test_split)
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(tmp_path / "ds"), limit=300)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(spark, config)
    assert len(calls) == 3          # train and validation were written before the failure
    assert list(tmp_path.iterdir()) == []
