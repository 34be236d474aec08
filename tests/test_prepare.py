"""The Spark prepare job on real MNIST: exact round trip, deterministic splits, atomic output,
Petastorm metadata, MLflow logging of the manifest."""
import hashlib
import json
import re

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


def test_manifest_and_petastorm_metadata(small_mnist):
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, get_schema_from_dataset_url

    from nnfund_spark.data.idx import SOURCES
    from nnfund_spark.data.schema import SCHEMA_VERSION, image_schema

    out, manifest = small_mnist
    source = manifest["source"]
    assert source["name"] == "mnist" and source["checksums_verified"] is True
    # the same value as before the source refactor: sha256 over "stem:published sha256" lines
    published = "".join(f"{stem}:{sha}\n" for stem, sha in sorted(SOURCES["mnist"].sha256.items()))
    assert source["checksum_sha256"] == hashlib.sha256(published.encode()).hexdigest()
    assert manifest["test_split"] == "official" and manifest["test_fraction"] is None
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["num_classes"] == 10
    assert manifest["skipped"]["count"] == 0 and manifest["skipped"]["items"] == []
    assert manifest["color_mode"] == "keep" and manifest["image_codec"] == "png"
    expected = image_schema(28, 28, 1, "png")
    for split in ("train", "validation", "test"):
        info = manifest["splits"][split]
        files = sorted((out / split).glob("*.parquet"))
        # one row group per file, each far below the row-group target
        assert info["files"] == info["row_groups"] == len(files)
        assert info["bytes"] == sum(f.stat().st_size for f in files)
        assert all(f.stat().st_size < 4 << 20 for f in files)
        meta = pq.read_schema(out / split / "_common_metadata").metadata
        groups = json.loads(meta[ROW_GROUPS_PER_FILE_KEY])
        assert groups == {f.name: pq.read_metadata(f).num_row_groups for f in files}
        schema = get_schema_from_dataset_url((out / split).as_uri())
        assert list(schema.fields) == list(expected.fields)
        assert schema.fields["image"].shape == (28, 28)


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), [100, 120, 80, 100, 100, 90, 110, 100, 100, 100])
    keep, held = stratified_split(labels, 0.1, seed=7)
    assert len(np.intersect1d(keep, held)) == 0 and len(keep) + len(held) == len(labels)
    assert np.bincount(labels[held]).tolist() == [10, 12, 8, 10, 10, 9, 11, 10, 10, 10]
    again_keep, again_held = stratified_split(labels, 0.1, seed=7)
    assert again_held.tobytes() == held.tobytes()
    assert stratified_split(labels, 0.1, seed=8)[1].tobytes() != held.tobytes()


def test_splits_without_official_test_set_are_stratified_and_seeded():
    from nnfund_spark.data.splits import make_splits

    labels = np.repeat(np.arange(4), [50, 30, 20, 100])
    items = np.arange(1000, 1200)  # item indices need not be positions
    splits = make_splits({"train": (items, labels)}, 0.1, 0.2, seed=3)
    members = {name: ids for name, (pool, ids) in splits.items()}
    assert sorted(np.concatenate(list(members.values())).tolist()) == items.tolist()
    test_labels = labels[members["test"] - 1000]
    assert np.bincount(test_labels).tolist() == [10, 6, 4, 20]          # 20% of each class
    assert np.bincount(labels[members["validation"] - 1000]).tolist() == [4, 2, 2, 8]
    again = make_splits({"train": (items, labels)}, 0.1, 0.2, seed=3)
    assert all(again[s][1].tobytes() == splits[s][1].tobytes() for s in splits)
    other = make_splits({"train": (items, labels)}, 0.1, 0.2, seed=4)
    assert other["test"][1].tobytes() != splits["test"][1].tobytes()


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
    # A space in a parent: executors get the location percent-encoded in a file:// URI.
    out = tmp_path / "my data" / "ds"
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out), limit=300)
    first = prepare_dataset(spark, config)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        prepare_dataset(spark, config)
    # the refusal left the dataset exactly as it was
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    config.overwrite, config.seed = True, 5
    second = prepare_dataset(spark, config)
    assert second["split_seed"] == 5
    assert json.loads((out / "manifest.json").read_text())["split_seed"] == 5
    assert second["splits"]["train"]["index_sha256"] != first["splits"]["train"]["index_sha256"]
    assert [p.name for p in tmp_path.iterdir()] == ["my data"]  # nothing written elsewhere
    assert [p.name for p in out.parent.iterdir()] == ["ds"]  # no staging or backup left


def test_a_damaged_or_newer_manifest_is_refused_by_name(small_mnist, tmp_path):
    import shutil

    from nnfund_spark.data.manifest import SCHEMA_VERSION, read_manifest

    source, manifest = small_mnist
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(source / "manifest.json", copy / "manifest.json")
    assert read_manifest(copy) == manifest
    (copy / "manifest.json").write_text(json.dumps(manifest)[:100])
    with pytest.raises(ValueError, match=r"copy/manifest.json is not a readable manifest .*"
                                         r"re-prepare the dataset"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not a manifest"):
        read_manifest(copy)
    (copy / "manifest.json").write_text(json.dumps(dict(manifest,
                                                        schema_version=SCHEMA_VERSION + 1)))
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1} is newer .*"
                                         f"upgrade nnfund_spark"):
        read_manifest(copy)


def test_overwrite_replaces_only_a_dataset_and_never_the_raw_data(mnist_raw_dir, tmp_path,
                                                                   monkeypatch, capsys):
    """--overwrite on a directory that is not a prepared dataset, on a file, or on a location
    that is, holds or lies inside the raw data is refused before anything is read or
    deleted (the checks run before Spark is touched: no session is passed)."""
    raw = tmp_path / "data" / "raw" / "mnist"
    raw.mkdir(parents=True)
    for item in mnist_raw_dir.iterdir():
        (raw / item.name).symlink_to(item)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    cases = {str(tmp_path / "data"): "overlaps data.raw_dir",
             str(raw): "overlaps data.raw_dir",
             str(raw / "out"): "overlaps data.raw_dir",
             str(notes): r"is not a prepared dataset \(no manifest.json, and it holds keep.txt\)",
             str(a_file): "is a file, not a prepared dataset"}
    for output, message in cases.items():
        config = DataConfig(raw_dir=str(raw), output_dir=output, limit=300, overwrite=True)
        with pytest.raises(OutputExistsError, match=message):
            prepare_dataset(None, config)
    # The CLI gives the same refusals before it starts Spark (exit 1), with or without
    # --overwrite for an existing output.
    import nnfund_spark.spark as spark_module
    from nnfund_spark import cli

    def no_spark(*args):
        raise AssertionError("Spark was started")

    monkeypatch.setattr(spark_module, "build_session", no_spark)
    for output, message in [*cases.items(), (str(notes), "output already exists: .*notes "
                                                         r"\(pass --overwrite")]:
        flags = ["--overwrite"] if "already exists" not in message else []
        assert cli.main(["prepare", "--set", f"data.raw_dir={raw}", "--set",
                         f"data.output_dir={output}", *flags]) == 1
        assert re.search(f"nnfund-spark prepare: error: .*{message}", capsys.readouterr().err)
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name for p in mnist_raw_dir.iterdir())
    assert (notes / "keep.txt").read_text() == "mine" and a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "data", "notes"]


def test_overwrite_replaces_a_dataset_whose_commit_was_interrupted(spark, mnist_raw_dir,
                                                                    tmp_path):
    """Split folders without a manifest (an object-store commit cut short) are a dataset's
    own leftovers: --overwrite replaces them."""
    out = tmp_path / "ds"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-0.parquet").write_bytes(b"half")
    manifest = prepare_dataset(spark, DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out),
                                                 limit=300, overwrite=True))
    assert json.loads((out / "manifest.json").read_text())["created_at"] == manifest["created_at"]
    assert not (out / "train" / "part-0.parquet").exists()


def test_failure_mid_write_leaves_nothing(spark, mnist_raw_dir, tmp_path, monkeypatch):
    import nnfund_spark.data.writer as writer

    calls = []
    real = writer.finish_split

    def fail_on_test_split(split_dir, *args, **kwargs):
        calls.append(split_dir.name)
        if split_dir.name == "test":
            raise RuntimeError("disk full (simulated)")
        return real(split_dir, *args, **kwargs)

    monkeypatch.setattr(writer, "finish_split", fail_on_test_split)
    config = DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(tmp_path / "ds"), limit=300)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset(spark, config)
    assert sorted(calls) == ["test", "train", "validation"]  # the others were complete
    assert list(tmp_path.iterdir()) == []


def test_task_failure_on_executor_leaves_nothing_and_names_the_error(spark, tmp_path,
                                                                     monkeypatch):
    """A Python error inside a Spark task (here: images that do not fit the declared schema)
    fails the job with the task's own message, and the old dataset survives untouched."""
    import nnfund_spark.data.prepare as prepare
    import nnfund_spark.data.writer as writer
    from nnfund_spark.data.schema import image_schema

    out = tmp_path / "ds"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    # Only the executors encode rows once the driver-side size estimate is bypassed.
    monkeypatch.setattr(prepare, "image_schema", lambda h, w, c, codec: image_schema(h + 1, w, c))
    monkeypatch.setattr(writer, "estimate_row_bytes", lambda schema, images: 100)
    config = DataConfig(source="digits", output_dir=str(out), overwrite=True)
    with pytest.raises(writer.SparkWriteError,
                       match=r"ValueError: Unexpected dimensions of image feature"):
        prepare_dataset(spark, config)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert [p.name for p in out.iterdir()] == ["manifest.json"]


def test_log_manifest_to_mlflow(small_mnist, tmp_path, monkeypatch):
    import mlflow

    from nnfund_spark.data.prepare import log_manifest_to_mlflow

    out, manifest = small_mnist
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        assert log_manifest_to_mlflow(manifest) is False  # no active run: nothing logged
        experiment = mlflow.create_experiment("prep", artifact_location=str(tmp_path / "art"))
        with mlflow.start_run(experiment_id=experiment) as run:
            assert log_manifest_to_mlflow(manifest, out.as_uri()) is True
        logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/dataset/manifest.json")
        assert logged == manifest
        (entry,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        assert entry.dataset.name == "mnist" and len(entry.dataset.digest) == 32
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"
        # a dataset location with inline credentials is recorded without them (another
        # experiment: MLflow keeps one record per dataset digest within an experiment)
        other = mlflow.create_experiment("prep_remote", artifact_location=str(tmp_path / "art2"))
        with mlflow.start_run(experiment_id=other) as run:
            log_manifest_to_mlflow(manifest, "s3a://AKIAX:se/cret@bucket/ds")
        (entry,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        assert "s3a://***@bucket/ds" in entry.dataset.source
        assert "cret" not in entry.dataset.source and "AKIAX" not in entry.dataset.source
    finally:
        mlflow.set_tracking_uri(None)


def test_min_row_groups_sets_how_many_ranks_a_split_can_serve(spark, mnist_raw_dir, tmp_path):
    from nnfund_spark.config import DataConfig
    from nnfund_spark.data.prepare import prepare_dataset
    from nnfund_spark.training.pipeline import read_shard

    out = tmp_path / "many_groups"
    manifest = prepare_dataset(spark, DataConfig(raw_dir=str(mnist_raw_dir), output_dir=str(out),
                                                 limit=600, min_row_groups=40))
    assert manifest["min_row_groups"] == 40
    assert manifest["splits"]["train"]["files"] == 40  # 540 images: 40 row groups
    assert manifest["splits"]["validation"]["files"] == 40  # 60 images
    # With 40 ranks, the first, a middle and the last rank each get a non-empty shard.
    shards = [read_shard((out / "train").as_uri(), rank, 40)[0] for rank in (0, 17, 39)]
    assert all(len(shard) >= 13 for shard in shards)


def test_failed_local_overwrite_commit_puts_the_old_dataset_back(tmp_path, monkeypatch):
    """If the finished dataset cannot be renamed into place, the old one (already renamed
    aside) is renamed back before the error is raised: a failed --overwrite loses nothing."""
    import os

    from nnfund_spark.data import storage

    final, staging = tmp_path / "ds", tmp_path / ".ds.tmp-1"
    final.mkdir()
    (final / "manifest.json").write_text("old")
    staging.mkdir()
    (staging / "manifest.json").write_text("new")
    real_rename = os.rename

    def rename(src, dst):
        if os.fspath(src) == str(staging):
            raise OSError("disk full (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(storage.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        storage.commit(storage.resolve(staging), storage.resolve(final), last="manifest.json")
    assert (final / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.tmp-1", "ds"]  # no .old- left


def test_split_row_count_is_checked_against_the_rows_written(tmp_path):
    """finish_split counts the rows in the Parquet footers the driver sees; another count than
    was written (executors that wrote to a disk the driver does not share) is an error naming
    the split, both numbers and the likely cause."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nnfund_spark.data.schema import image_schema
    from nnfund_spark.data.storage import resolve
    from nnfund_spark.data.writer import MissingRowsError, finish_split, row_arrow_schema

    schema = image_schema(4, 4, 1, "ndarray")
    file_schema = row_arrow_schema(schema)
    split = tmp_path / "train"
    split.mkdir()
    columns = {"index": pa.array([0, 1, 2], pa.int64()), "label": pa.array([0, 1, 0], pa.int32()),
               "image": pa.array([b"x"] * 3, pa.binary())}
    pq.write_table(pa.table([columns[f.name] for f in file_schema], schema=file_schema),
                   split / "part-00000.parquet")
    with pytest.raises(MissingRowsError, match=r"split 'train': the driver finds 3 rows in "
                                               r".*train but 5 were written.*shared by the "
                                               r"driver and every executor"):
        finish_split(resolve(split), schema, file_schema, 5)
    assert finish_split(resolve(split), schema, file_schema, 3)["files"] == 1
    empty = tmp_path / "test"
    empty.mkdir()
    with pytest.raises(MissingRowsError, match=r"split 'test': the driver finds 0 rows .* 7 "):
        finish_split(resolve(empty), schema, file_schema, 7)
    assert finish_split(resolve(empty), schema, file_schema, 0)["row_groups"] == 0


def test_classes_without_training_examples_are_named_in_a_warning(spark, tmp_path, caplog):
    """digits in order 0, 1, ..., 9: data.limit=5 leaves classes 5-9 with no image at all. The
    dataset is still written (small limits are for quick trials), with a WARNING naming them."""
    import logging

    out = tmp_path / "ds"
    with caplog.at_level(logging.WARNING, logger="nnfund_spark.data.prepare"):
        manifest = prepare_dataset(spark, DataConfig(source="digits", output_dir=str(out),
                                                     limit=5))
    assert [n for n, c in manifest["splits"]["train"]["per_class"].items() if c == 0] == \
        ["5", "6", "7", "8", "9"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("5 of 10 classes have no training examples: 5, 6, 7, 8, 9 (split "
                            "counts: train 5, validation 0, test 0; data.limit=5)")
               for m in warnings), warnings
    assert (out / "manifest.json").is_file()
