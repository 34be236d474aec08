"""Per-rank batching: equal steps on every rank, every example once per epoch."""
import numpy as np
import pytest

from nnfund_spark.training.pipeline import (epoch_batches, epoch_dataset, epoch_order,
                                            steps_per_epoch)


def test_steps_follow_the_largest_shard():
    assert steps_per_epoch([1000, 1000], 64) == 16
    assert steps_per_epoch([1000, 700], 64) == 16   # the small shard uses smaller batches
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


def test_ranks_read_a_dataset_whose_path_has_a_space(small_mnist, tmp_path):
    """The split URLs the launcher hands the ranks open with Petastorm even when a directory
    on the way has a space (Petastorm does not decode %20 in file:// URLs)."""
    import shutil

    from nnfund_spark.config import load_config
    from nnfund_spark.data.storage import resolve
    from nnfund_spark.training.launcher import worker_settings
    from nnfund_spark.training.pipeline import read_shard

    out, manifest = small_mnist
    spaced = tmp_path / "my data" / "mnist"
    shutil.copytree(out, spaced)
    config = load_config(None, [f"data.output_dir={spaced}"])
    urls = worker_settings(config, manifest, resolve(spaced))["split_urls"]
    counts = {split: sum(len(read_shard(url, rank, 2)[0]) for rank in (0, 1))
              for split, url in urls.items()}
    assert counts == {split: manifest["splits"][split]["count"] for split in urls}
