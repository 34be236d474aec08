"""Per-rank batching: equal steps on every rank, every example once per epoch."""
import numpy as np
import pytest

from nnfund_spark.training.pipeline import (epoch_batches, epoch_dataset, epoch_order,
                                            steps_per_epoch)


def test_steps_follow_the_largest_shard():
    assert steps_per_epoch([1000, 1000], 64) == 16
    assert steps_per_epoch([1000, 700], 64) == 16   # the small shard uses smaller batches
    assert steps_per_epoch([1000, 16], 64) == 16    # one example per step: still allowed
    with pytest.raises(ValueError, match=r"train shards \[1000, 15\] are too uneven for 16 "
                                         r"steps of batch 64"):
        steps_per_epoch([1000, 15], 64)
    with pytest.raises(ValueError, match="a rank got no training data"):
        steps_per_epoch([1000, 0], 64)
    with pytest.raises(ValueError, match="too uneven"):
        steps_per_epoch([1000, 10], 64)


@pytest.mark.parametrize("count", [700, 1000, 1023])
def test_batches_cover_the_shard_once_in_near_equal_sizes(count):
    batches = epoch_batches(count, 16, seed=1, epoch=0, rank=0)
    assert len(batches) == 16
    assert sorted(np.concatenate(batches).tolist()) == list(range(count))
    sizes = [len(b) for b in batches]
    assert max(sizes) - min(sizes) <= 1


def test_order_depends_on_seed_epoch_and_rank():
    base = epoch_order(500, 7, 0, 0)
    assert np.array_equal(base, epoch_order(500, 7, 0, 0))
    for other in (epoch_order(500, 8, 0, 0), epoch_order(500, 7, 1, 0), epoch_order(500, 7, 0, 1)):
        assert not np.array_equal(base, other)


def test_dataset_yields_exactly_steps_batches_with_every_label_once():
    images = np.arange(103 * 4, dtype=np.uint8).reshape(103, 2, 2, 1)
    labels = np.arange(103, dtype=np.int32)
    batches = list(epoch_dataset(images, labels, steps=5, seed=3, epoch=2, rank=1))
    assert len(batches) == 5
    seen = np.concatenate([y.numpy() for _, y in batches])
    assert sorted(seen.tolist()) == labels.tolist()
    assert [int(x.shape[0]) for x, _ in batches] == [21, 21, 21, 20, 20]
    assert batches[0][0].dtype.name == "float32"
    first_x, first_y = batches[0]
    # images travel with their labels
    np.testing.assert_array_equal(first_x.numpy()[:, 0, 0, 0], (first_y.numpy() * 4) % 256)


def test_recorder_reports_the_rows_the_stream_yielded():
    """The tests' exactly-once check rests on ExampleRecorder: it must report what passed, in
    order, duplicates matched one for one, and flag an image the shard does not hold."""
    from nnfund_spark.training.pipeline import ExampleRecorder

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 3, 3, 1), dtype=np.uint8)
    images[7] = images[3]  # two identical images
    labels = np.arange(50, dtype=np.int32)
    recorder = ExampleRecorder(images)
    stream = recorder.wrap(epoch_dataset(images, labels, steps=4, seed=1, epoch=0, rank=0))
    yielded = np.concatenate([y.numpy() for _, y in stream])  # labels are the rows here
    positions = recorder.take_positions()
    assert sorted(positions) == list(range(50))
    same = {3, 7}
    assert [p if p not in same else -2 for p in positions] == \
        [int(y) if int(y) not in same else -2 for y in yielded]
    assert recorder.take_positions() == []  # each call reports what passed since the last
    # A stream that repeats one row and drops another does not pass as exactly-once.
    import tensorflow as tf
    doubled = tf.data.Dataset.from_tensor_slices((images[[0, 0, 1]].astype(np.float32),
                                                  labels[[0, 0, 1]])).batch(3)
    list(recorder.wrap(doubled))
    assert recorder.take_positions() == [0, -1, 1]


def assert_shards_match_petastorm(split_dir, size: int) -> None:
    """read_shard gives every rank of ``size`` exactly the rows, in the same order and with
    the same pixels, that Petastorm's own make_reader gives for cur_shard=rank."""
    from petastorm import make_reader

    from nnfund_spark.data.schema import as_hwc
    from nnfund_spark.training.pipeline import read_shard

    seen = []
    for rank in range(size):
        with make_reader(split_dir.as_uri(), schema_fields=["index", "image", "label"],
                         cur_shard=rank, shard_count=size, num_epochs=1,
                         shuffle_row_groups=False, reader_pool_type="dummy") as reader:
            rows = list(reader)
        index, images, labels = read_shard(split_dir.as_uri(), rank, size)
        assert rows and index.tolist() == [int(row.index) for row in rows]
        assert labels.tolist() == [int(row.label) for row in rows]
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(images, as_hwc(np.stack([row.image for row in rows])))
        seen.extend(index.tolist())
    assert len(seen) == len(set(seen))


def test_shards_are_petastorms_row_group_shards(small_mnist):
    out, manifest = small_mnist
    assert manifest["splits"]["train"]["row_groups"] >= 3
    assert_shards_match_petastorm(out / "train", 3)


def test_shard_assignment_numbers_row_groups_in_file_order():
    from nnfund_spark.training.pipeline import shard_row_groups

    counts = {"part-1.parquet": 1, "part-0.parquet": 2, "part-2.parquet": 2}
    assert shard_row_groups(counts, 0, 2) == [("part-0.parquet", 0), ("part-1.parquet", 0),
                                              ("part-2.parquet", 1)]
    assert shard_row_groups(counts, 1, 2) == [("part-0.parquet", 1), ("part-2.parquet", 0)]
    assert shard_row_groups(counts, 5, 6) == []  # more ranks than row groups: an empty shard


def test_a_directory_that_is_not_a_petastorm_split_is_refused(tmp_path):
    from nnfund_spark.training.pipeline import read_shard

    (tmp_path / "part-0.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not a Petastorm dataset split .*nnfund-spark prepare"):
        read_shard(tmp_path.as_uri(), 0, 1)


def test_ranks_read_a_dataset_whose_path_has_a_space(small_mnist, tmp_path):
    """The split URLs the launcher hands the ranks open with Petastorm even when a directory
    on the way has a space (Petastorm does not decode %20 in file:// URLs)."""
    import shutil

    from nnfund_spark.config import load_config
    from nnfund_spark.data.storage import resolve
    from nnfund_spark.training.launcher import worker_settings
    from nnfund_spark.training.pipeline import StreamedShard, read_shard

    out, manifest = small_mnist
    spaced = tmp_path / "my data é" / "mnist"
    shutil.copytree(out, spaced)
    config = load_config(None, [f"data.output_dir={spaced}"])
    urls = worker_settings(config, manifest, resolve(spaced))["split_urls"]
    counts = {split: sum(len(read_shard(url, rank, 2)[0]) for rank in (0, 1))
              for split, url in urls.items()}
    assert counts == {split: manifest["splits"][split]["count"] for split in urls}
    # ... and so does the streamed reader (train.input: stream), footers and row groups alike
    streamed = [StreamedShard(urls["train"], rank, 2, window=2) for rank in (0, 1)]
    assert sum(shard.count for shard in streamed) == manifest["splits"]["train"]["count"]
    assert sum(len(shard.indices()) for shard in streamed) == manifest["splits"]["train"]["count"]


def test_streamed_shards_give_the_in_memory_batches_sizes_and_every_example_once(small_mnist,
                                                                                  monkeypatch):
    """train.input=stream: each rank reads its row groups afresh every epoch, at most
    `window` of them decoded at a time, and still hands over `steps` batches of the in-memory
    path's sizes that cover its shard exactly once, in a new order every epoch."""
    from nnfund_spark.training import pipeline
    from nnfund_spark.training.pipeline import StreamedShard, read_shard

    out, manifest = small_mnist
    url = (out / "train").as_uri()
    reads = []
    real_read = pipeline._read_groups
    monkeypatch.setattr(pipeline, "_read_groups", lambda split, field, chosen, head=None: (
        reads.append(len(chosen)) or real_read(split, field, chosen, head)))
    shards = [StreamedShard(url, rank, 2, window=3) for rank in (0, 1)]
    # the row counts come from the Parquet footers, the indices are the in-memory shard's
    for rank, shard in enumerate(shards):
        index, _, _ = read_shard(url, rank, 2)
        assert shard.count == len(index) and sorted(shard.indices()) == sorted(index.tolist())
    steps = steps_per_epoch([s.count for s in shards], 32)
    orders = []
    for epoch in (0, 1):
        handed_over = []
        for rank, shard in enumerate(shards):
            reads.clear()
            record = []
            batches = list(shard.batches(steps, seed=7, epoch=epoch, rank=rank, record=record))
            assert [len(labels) for _, labels in batches] == [
                len(part) for part in np.array_split(np.arange(shard.count), steps)]
            assert all(images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
                       for images, _ in batches)
            assert reads == [3] * (len(shard.plan) // 3) + [len(shard.plan) % 3] * bool(
                len(shard.plan) % 3)  # never more than `window` row groups at once
            indices = [int(i) for batch in record for i in batch]
            assert sorted(indices) == sorted(shard.indices())  # its own shard, once each
            handed_over += indices
            if rank == 0:
                orders.append(indices)
        assert len(handed_over) == len(set(handed_over)) == manifest["splits"]["train"]["count"]
    assert orders[0] != orders[1]  # reshuffled every epoch ...
    record = []
    list(shards[0].batches(steps, seed=7, epoch=1, rank=0, record=record))
    assert [int(i) for batch in record for i in batch] == orders[1]  # ... reproducibly
    # the labels travel with their images: the streamed batches match the stored rows
    _, images, labels = read_shard(url, 0, 2)
    by_index = {int(i): row for row, i in enumerate(read_shard(url, 0, 2)[0])}
    record = []
    for batch_images, batch_labels in shards[0].batches(steps, seed=7, epoch=0, rank=0,
                                                         record=record):
        rows = [by_index[int(i)] for i in record[-1]]
        np.testing.assert_array_equal(batch_images, images[rows])
        np.testing.assert_array_equal(batch_labels, labels[rows])


def test_a_streamed_shard_cut_to_a_limit_keeps_its_first_rows(small_mnist):
    from nnfund_spark.training.pipeline import StreamedShard, read_shard

    out, _ = small_mnist
    url = (out / "train").as_uri()
    shard = StreamedShard(url, 1, 2, window=2, limit=150)
    assert shard.count == 150 and shard.indices() == read_shard(url, 1, 2)[0][:150].tolist()
    record = []
    batches = list(shard.batches(10, seed=1, epoch=0, rank=1, record=record))
    assert [len(labels) for _, labels in batches] == [15] * 10
    assert sorted(int(i) for batch in record for i in batch) == sorted(shard.indices())


def test_a_row_group_that_changed_since_the_footers_were_read_is_named(small_mnist):
    """A streamed shard counts its rows from the footers once; a row group that holds another
    number when an epoch reads it would break exactly-once, so the read stops, naming it."""
    from nnfund_spark.training.pipeline import StreamedShard

    out, _ = small_mnist
    shard = StreamedShard((out / "train").as_uri(), 0, 2, window=2)
    name, group, keep, held = shard.plan[0]
    shard.plan[0] = (name, group, keep, held + 1)
    with pytest.raises(ValueError, match=rf"{name}: row group {group} holds {held} rows, "
                                         rf"{held + 1} when this job started: the split changed"):
        list(shard.batches(10, seed=1, epoch=0, rank=0))


def test_images_of_a_variable_shape_field_take_the_first_ones_shape_and_must_agree(small_mnist):
    """Petastorm fields may leave a dimension open (None); the reader then takes the shape of
    the first image and refuses one that differs instead of broadcasting or failing later."""
    from nnfund_spark.training.pipeline import _read_groups, read_shard, split_metadata

    out, _ = small_mnist
    split, field, counts = split_metadata((out / "train").as_uri())
    name = sorted(counts)[0]

    class Open:  # the same images, declared with an open height and width
        shape = (None, None)
        numpy_dtype = field.numpy_dtype

        class codec:  # noqa: N801
            heights: list = []  # rows kept of each image, in turn; whole images once empty

            @classmethod
            def decode(cls, _field, value):
                image = field.codec.decode(field, value)
                return image[:cls.heights.pop(0)] if cls.heights else image

    indices, images, labels = _read_groups(split, Open, [(name, 0, None, None)])
    expected = read_shard((out / "train").as_uri(), 0, 1)
    assert images.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(images, expected[1][:len(indices)])
    np.testing.assert_array_equal(labels, expected[2][:len(indices)])
    Open.codec.heights = [28, 28, 28, 27]  # the fourth image is one row short
    with pytest.raises(ValueError, match=rf"{name}: row group 0 holds an image of shape "
                                         r"\(27, 28\) among images of shape \(28, 28\)"):
        _read_groups(split, Open, [(name, 0, None, None)])
