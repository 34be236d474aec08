"""Per-rank input: read this rank's shard once and build each epoch's batches from memory
(``train.input: memory``), or read it again every epoch a few row groups at a time
(``StreamedShard``, ``train.input: stream``).

Every rank runs the same number of steps per epoch (an allreduce waits for all ranks, so a rank
with an extra step would hang the job) and every example of the train split is used exactly once
per epoch: a rank with a smaller shard uses slightly smaller batches instead of dropping or
repeating examples.
"""
from __future__ import annotations

import json
import math

import numpy as np


def shard_row_groups(row_groups_per_file: dict, rank: int, size: int) -> list:
    """(file, row group) pairs of rank ``rank`` of ``size``: Petastorm's row-group sharding.

    The split's row groups are numbered as Petastorm's make_reader numbers them (files in path
    order, each file's row groups in order) and rank r takes those whose number is r mod size.
    A rank left without a row group gets [] (the launcher then says how to fix it)."""
    numbered = [(name, group) for name in sorted(row_groups_per_file)
                for group in range(int(row_groups_per_file[name]))]
    return numbered[rank::size]


def read_shard(url: str, rank: int, size: int):
    """This rank's row-group shard of a Petastorm split as (indices, images HxWxC, labels)."""
    return read_row_groups(url, lambda counts: shard_row_groups(counts, rank, size))


def read_row_groups(url: str, choose):
    """The examples of the row groups ``choose(row_groups_per_file)`` picks from a Petastorm
    split, as (indices, images HxWxC, labels), files in the order first chosen and each file's
    row groups in the order chosen.

    Reads them with pyarrow and decodes each image with the codec of the Unischema stored in
    the split's ``_common_metadata``: the examples Petastorm's make_reader returns for the same
    row groups, without its per-row machinery (a 27,000-image MNIST shard on one core: 0.50-0.56 s
    against 0.78-0.94 s, side by side in one process)."""
    split, image_field, counts = split_metadata(url)
    return _read_groups(split, image_field, [(name, group, None, None)
                                             for name, group in choose(counts)])


def split_metadata(url: str):
    """(the split's Location, its Unischema image field, row groups per file) from the
    split's ``_common_metadata``; a clear error when it is not a Petastorm split."""
    import pyarrow.parquet as pq
    from petastorm.etl.dataset_metadata import ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY
    from petastorm.etl.legacy import depickle_legacy_package_name_compatible

    from nnfund_spark.data.storage import resolve

    split = resolve(url)
    common = split.child("_common_metadata")
    if not common.exists():
        raise ValueError(f"{split.display} is not a Petastorm dataset split (it has no "
                         f"_common_metadata); prepare it with `nnfund-spark prepare`")
    with common.open() as handle:
        metadata = pq.read_schema(handle).metadata or {}
    missing = [key.decode() for key in (ROW_GROUPS_PER_FILE_KEY, UNISCHEMA_KEY)
               if key not in metadata]
    if missing:
        raise ValueError(f"{common.display} lacks Petastorm's {', '.join(missing)}: not a "
                         f"split written by `nnfund-spark prepare` (or Petastorm's "
                         f"materialize_dataset)")
    image_field = depickle_legacy_package_name_compatible(metadata[UNISCHEMA_KEY]).fields["image"]
    return split, image_field, json.loads(metadata[ROW_GROUPS_PER_FILE_KEY].decode())


def _read_groups(split, image_field, chosen: list, head=None):
    """(indices, images HxWxC, labels) of the (file, row group, rows to keep or None, rows the
    group must hold or None) in ``chosen``, each file opened once, after the examples of
    ``head`` (a triple of the same form) when given. The images are decoded straight into one
    array: the encoded row groups and that array are all the memory it takes."""
    import pyarrow.parquet as pq

    from nnfund_spark.data.schema import as_hwc

    by_file: dict = {}
    for name, group, keep, expected in chosen:
        by_file.setdefault(name, []).append((group, keep, expected))
    tables = []
    for name, groups in by_file.items():
        with split.child(name).open() as handle:
            parquet = pq.ParquetFile(handle)
            for group, keep, expected in groups:
                table = parquet.read_row_group(group, columns=["index", "image", "label"])
                if expected is not None and table.num_rows != expected:
                    raise ValueError(f"{split.child(name).display}: row group {group} holds "
                                     f"{table.num_rows} rows, {expected} when this job started: "
                                     f"the split changed while it was being read")
                tables.append((name, group, table.slice(0, keep)))
    first = len(head[0]) if head is not None else 0
    total = first + sum(table.num_rows for _, _, table in tables)
    if not total:
        return np.zeros((0,), np.int64), None, np.zeros((0,), np.int32)
    shape = tuple(image_field.shape)
    if None in shape:  # a variable-shape field: the first image sets the shape
        shape = head[1].shape[1:] if first else next(
            image_field.codec.decode(image_field, table.column("image")[0].as_py()).shape
            for _, _, table in tables if table.num_rows)
    indices = np.empty((total,), np.int64)
    labels = np.empty((total,), np.int32)
    images = np.empty((total, *shape), image_field.numpy_dtype)
    if first:
        indices[:first], labels[:first] = head[0], head[2]
        images[:first] = head[1].reshape(first, *shape)
    row = first
    for name, group, table in tables:
        rows = slice(row, row + table.num_rows)
        indices[rows] = table.column("index").to_numpy()
        labels[rows] = table.column("label").to_numpy()
        for position, value in enumerate(table.column("image").to_pylist(), start=row):
            image = image_field.codec.decode(image_field, value)
            if image.shape != images.shape[1:]:
                raise ValueError(f"{split.child(name).display}: row group {group} holds an "
                                 f"image of shape {image.shape} among images of shape "
                                 f"{images.shape[1:]}; a split's images must share one shape")
            images[position] = image
        row += table.num_rows
    return indices, as_hwc(images), labels


class StreamedShard:
    """This rank's row-group shard of a split, read afresh every epoch instead of held in
    memory (``train.input: stream``): only ``window`` decoded row groups (plus less than one
    batch carried over) are in memory at a time.

    Each epoch visits the shard's row groups in a permutation seeded by (seed, epoch, rank),
    ``window`` at a time; the examples of each window, with those carried over, are shuffled
    together and cut into the epoch's batches, whose sizes are those of the in-memory path
    (``steps`` batches differing by at most one). So every example is used exactly once per
    epoch and every rank runs the same steps; the mixing reaches across ``window`` row groups
    rather than the whole shard."""

    def __init__(self, url: str, rank: int, size: int, window: int, limit: int | None = None):
        import pyarrow.parquet as pq

        self.split, self.image_field, counts = split_metadata(url)
        self.window = max(1, int(window))
        mine = shard_row_groups(counts, rank, size)
        rows = {}
        for name in dict.fromkeys(name for name, _ in mine):  # each footer read once
            with self.split.child(name).open() as handle:
                metadata = pq.ParquetFile(handle).metadata
            rows.update({(name, group): metadata.row_group(group).num_rows
                         for group in range(metadata.num_row_groups)})
        self.plan, self.count = [], 0
        for name, group in mine:
            held = rows[(name, group)]
            if limit is not None and self.count >= limit:
                break  # limit (a test hook) keeps the first `limit` rows of the shard
            keep = held if limit is None else min(held, limit - self.count)
            if keep:  # an empty row group has nothing to read
                # each read checks the group still holds what its footer said
                self.plan.append((name, group, keep if keep < held else None, held))
                self.count += keep

    def indices(self) -> list:
        """The dataset indices of the shard's examples (a test hook: reads the index column)."""
        import pyarrow.parquet as pq

        found = []
        for name, group, keep, _ in self.plan:
            with self.split.child(name).open() as handle:
                column = pq.ParquetFile(handle).read_row_group(group, columns=["index"])
            found.extend(column.column("index").to_pylist()[:keep])
        return found

    def batches(self, steps: int, seed: int, epoch: int, rank: int, record=None):
        """Yield this epoch's ``steps`` batches as (images, labels); ``record`` (a list, a
        test hook) receives each batch's dataset indices as the batch is handed over."""
        rng = np.random.Generator(np.random.PCG64([seed, epoch, rank]))
        sizes = [len(part) for part in np.array_split(np.arange(self.count), steps)]
        order = rng.permutation(len(self.plan))
        carried = None
        step = 0
        for start in range(0, len(order), self.window):
            chunk = [self.plan[k] for k in order[start:start + self.window]]
            indices, images, labels = _read_groups(self.split, self.image_field, chunk,
                                                   head=carried)
            shuffle = rng.permutation(len(indices))
            used = 0
            while step < steps and len(indices) - used >= sizes[step]:
                chosen = shuffle[used:used + sizes[step]]  # gathered a batch at a time
                if record is not None:
                    record.append(indices[chosen])
                yield images[chosen], labels[chosen]
                used += sizes[step]
                step += 1
            rest = shuffle[used:]
            carried = (indices[rest], images[rest], labels[rest])
            del indices, images, labels  # the window goes before the next one is read
        left = len(carried[0]) if carried is not None else 0
        if step != steps or left:
            raise RuntimeError(f"{self.split.display}, rank {rank}, epoch {epoch + 1}: streamed "
                               f"{step} of {steps} batches with {left} examples left over: the "
                               f"shard changed while it was read")


def stream_dataset(shard: StreamedShard, image_shape, steps: int, seed: int, epoch: int,
                   rank: int, record=None):
    """``epoch_dataset`` for a StreamedShard: the same batches' sizes and exactly-once
    coverage, read and decoded as the epoch runs, two batches ahead of the model."""
    import tensorflow as tf

    signature = (tf.TensorSpec((None, *image_shape), tf.as_dtype(shard.image_field.numpy_dtype)),
                 tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(
        lambda: shard.batches(steps, seed, epoch, rank, record), output_signature=signature)
    # Keras needs the epoch's length up front (to run several steps per call); tf.data then
    # also fails the epoch if the stream ever yields another count.
    return _finish(dataset.apply(tf.data.experimental.assert_cardinality(steps)))


def steps_per_epoch(shard_sizes: list[int], batch_size: int) -> int:
    """Steps every rank runs: enough for the largest shard at batch_size."""
    if min(shard_sizes) == 0:
        raise ValueError(f"a rank got no training data (train shard sizes {shard_sizes}): the "
                         f"split has fewer row groups than ranks; lower train.num_proc or "
                         f"re-prepare with data.min_row_groups >= the number of ranks")
    steps = math.ceil(max(shard_sizes) / batch_size)
    if steps > min(shard_sizes):
        raise ValueError(f"train shards {shard_sizes} are too uneven for {steps} steps of "
                         f"batch {batch_size}: every rank needs at least one example per step")
    return steps


def epoch_order(count: int, seed: int, epoch: int, rank: int) -> np.ndarray:
    """The shard's example order for one epoch: a permutation seeded by (seed, epoch, rank)."""
    return np.random.Generator(np.random.PCG64([seed, epoch, rank])).permutation(count)


def epoch_batches(count: int, steps: int, seed: int, epoch: int, rank: int) -> list[np.ndarray]:
    """Split this epoch's permutation into `steps` batches whose sizes differ by at most one."""
    return np.array_split(epoch_order(count, seed, epoch, rank), steps)


def epoch_dataset(images: np.ndarray, labels: np.ndarray, steps: int, seed: int, epoch: int,
                  rank: int):
    """A tf.data pipeline over exactly `steps` batches covering the shard once."""
    import tensorflow as tf

    order = epoch_order(len(labels), seed, epoch, rank)
    big, remainder = divmod(len(labels), steps)
    # array_split semantics: the first `remainder` batches hold one extra example.
    cut = remainder * (big + 1)
    parts = []
    for start, stop, size in ((0, cut, big + 1), (cut, len(order), big)):
        if stop > start:
            chosen = order[start:stop]
            count = (stop - start) // size
            # Sliced a whole batch at a time: tf.data then handles `steps` elements per epoch
            # instead of one per example (a per-example slice + batch cost ~4% of a 1-core step).
            parts.append(tf.data.Dataset.from_tensor_slices((
                images[chosen].reshape(count, size, *images.shape[1:]),
                labels[chosen].reshape(count, size))))
    dataset = parts[0] if len(parts) == 1 else parts[0].concatenate(parts[1])
    return _finish(dataset)


def _finish(dataset):
    """Float images, two batches prefetched, no autotuner."""
    import tensorflow as tf

    # tf.data's autotuner is off: its background thread made destroying each epoch's iterator
    # wait ~4.5 s at the end of about half the fit() calls (measured on TF 2.15), i.e. a third
    # of an MNIST epoch lost per epoch; a cast and a 2-batch prefetch need no tuning.
    options = tf.data.Options()
    options.autotune.enabled = False
    return (dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
            .prefetch(2)
            .with_options(options))


class ExampleRecorder:
    """Test hook (the launcher's ``return_shard_indices`` setting): which of the shard's rows
    the training stream really handed to the model, recognised by their pixels as each batch
    passes. Identical images are matched one for one, so the result is the multiset of rows
    yielded; -1 marks a yielded image the shard does not hold (or holds fewer times)."""

    def __init__(self, images: np.ndarray):
        self._rows: dict = {}
        for position, image in enumerate(images.astype(np.float32)):
            self._rows.setdefault(image.tobytes(), []).append(position)
        self._yielded: list = []

    def wrap(self, dataset):
        """The same batches, each noted as it is produced for the model."""
        import tensorflow as tf

        def note(images):
            self._yielded.extend(row.tobytes() for row in images.numpy())
            return images

        def record(images, labels):
            passed = tf.py_function(note, [images], images.dtype)
            passed.set_shape(images.shape)
            return passed, labels

        return dataset.map(record)

    def take_positions(self) -> list[int]:
        """The shard positions yielded since the last call, in the order they were yielded."""
        free = {key: list(positions) for key, positions in self._rows.items()}
        taken = [free[key].pop(0) if free.get(key) else -1 for key in self._yielded]
        self._yielded = []
        return taken
