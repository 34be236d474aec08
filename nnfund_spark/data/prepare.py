"""Spark job body: raw image source -> Petastorm Parquet splits + manifest, written atomically.

Layout of a prepared dataset::

    <output_dir>/
        manifest.json           counts, shape, class names, mean/std, checksums, split seed
        train/ validation/ test/ one Petastorm dataset each (Parquet + Unischema metadata)

Everything is written under a hidden sibling directory first and renamed into place only when
complete, so a failed run never leaves something that looks like a valid dataset.
"""
from __future__ import annotations

import contextlib
import logging
import posixpath

import numpy as np

from nnfund_spark.config import DataConfig
from nnfund_spark.data.bad_input import check_bad_items, skipped_summary
from nnfund_spark.data.idx import DataSourceError
from nnfund_spark.data.images import channel_histograms, convert_batch, stats_from_histograms
from nnfund_spark.data.manifest import (MANIFEST, build_manifest, log_manifest_to_mlflow,
                                        read_manifest, split_entry, write_manifest)
from nnfund_spark.data.schema import image_schema
from nnfund_spark.data.splits import make_splits, stratified_split
from nnfund_spark.data.storage import Location, commit, overlapping, resolve, staging_for
from nnfund_spark.data.writer import write_array_splits

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Public names other modules and tests import from here.
__all__ = ["prepare_dataset", "read_manifest", "log_manifest_to_mlflow", "stratified_split",
           "OutputExistsError", "SPLITS", "MANIFEST"]


class OutputExistsError(FileExistsError):
    pass


@contextlib.contextmanager
def atomic_output(output: Location):
    """Yield a hidden staging directory; on success it replaces `output` (storage.commit), on
    any error it is removed and `output` (if it existed) is untouched. Whether `output` may be
    replaced at all is ``check_output``'s to decide, before."""
    staging = staging_for(output)
    staging.makedirs()
    try:
        yield staging
        commit(staging, output, last=MANIFEST)
    finally:
        if staging.exists():
            staging.remove_tree()


def _refuse_to_replace_non_dataset(output: Location) -> None:
    """--overwrite replaces a prepared dataset, nothing else: not a file, and not a directory
    that holds more than a dataset's own entries (a typo such as data.output_dir=data would
    otherwise delete the raw data beside the datasets). A dataset whose object-store commit was
    interrupted (split folders, no manifest yet) can still be replaced."""
    if output.is_file():
        raise OutputExistsError(f"output {output.display} is a file, not a prepared dataset; "
                                f"--overwrite only replaces a dataset directory. Choose another "
                                f"data.output_dir or remove the file")
    if output.child(MANIFEST).exists():
        return
    names = {posixpath.basename(entry.rstrip("/")) for entry in output.fs.ls(output.path)}
    foreign = sorted(names - {*SPLITS, MANIFEST})
    if foreign:
        raise OutputExistsError(f"output {output.display} is not a prepared dataset (no "
                                f"{MANIFEST}, and it holds {', '.join(foreign[:5])}"
                                f"{', …' if len(foreign) > 5 else ''}); --overwrite only replaces "
                                f"a dataset directory. Choose another data.output_dir or remove "
                                f"it yourself")


def _refuse_output_over_source(output: Location, raw_dir: str) -> None:
    """The output must not be, contain or lie inside the raw source: replacing it would delete
    the images being read, and a dataset inside an image folder would be read as its images."""
    source = overlapping(raw_dir, output)
    if source is not None:
        raise OutputExistsError(f"data.output_dir {output.display} overlaps data.raw_dir "
                                f"{source.display}; choose an output directory outside the raw "
                                f"data (and not a parent of it)")


def check_output(config: DataConfig) -> Location:
    """config.output_dir as a Location, refused (before Spark starts, by the CLI) when it
    overlaps data.raw_dir, exists without data.overwrite, or is not a dataset that
    overwrite may replace. ``prepare_dataset`` calls it first as well."""
    output = resolve(config.output_dir)
    _refuse_output_over_source(output, config.raw_dir)
    if output.exists() and not config.overwrite:
        raise OutputExistsError(f"output already exists: {output.display} (pass --overwrite or set "
                                f"data.overwrite=true to replace it)")
    if output.exists():
        _refuse_to_replace_non_dataset(output)
    return output


def prepare_dataset(spark, config: DataConfig) -> dict:
    """Prepare config.source into config.output_dir; return the manifest that was written."""
    output = check_output(config)  # first, so nothing is read when the output is in the way
    if config.source == "image_folder":
        from nnfund_spark.data.sources.image_folder import prepare_image_folder as run
    else:
        run = _prepare_arrays
    with atomic_output(output) as staging:
        manifest = run(spark, config, staging)
        write_manifest(staging, manifest)
    for split in SPLITS:
        info = manifest["splits"][split]
        log.info("wrote %s: %d examples in %d files", split, info["count"], info["files"])
    _warn_classes_without_training_examples(manifest)
    if manifest["skipped"]["count"]:
        log.warning("skipped %d bad input items (listed in %s): %s", manifest["skipped"]["count"],
                    output.child(MANIFEST).display, manifest["skipped"]["by_reason"])
    return manifest


def _warn_classes_without_training_examples(manifest: dict) -> list:
    """Log a WARNING naming the classes the train split holds no example of (a small data.limit,
    or a class with too few usable images to survive the split); return their names. Not an
    error: small limits are how quick trials and tests run."""
    splits = manifest["splits"]
    missing = [name for name, n in splits["train"]["per_class"].items() if n == 0]
    if missing:
        shown = ", ".join(missing[:20]) + (f", … ({len(missing)} in all)" if len(missing) > 20
                                           else "")
        counts = ", ".join(f"{s} {splits[s]['count']}" for s in SPLITS)
        limit = manifest["source"].get("limit")
        log.warning("%d of %d classes have no training examples: %s (split counts: %s%s); a model "
                    "trained on this dataset never sees them. Raise data.limit, add images, or "
                    "lower data.validation_fraction / data.test_fraction", len(missing),
                    manifest["num_classes"], shown, counts,
                    f"; data.limit={limit}" if limit else "")
    return missing


def _array_plan(config: DataConfig):
    """Load an array source and split it: (source, bad items, total, {split: (indices,
    images N x H x W x C uint8, labels)}). Shared by prepare and ``split_arrays``."""
    from nnfund_spark.data.sources import bad_labels, load_array_source

    source = load_array_source(config)
    if config.limit:
        source.splits = {name: (images[:config.limit], labels[:config.limit])
                         for name, (images, labels) in source.splits.items()}
    bad, pools = [], {}
    for name, (_, labels) in source.splits.items():
        split_bad, good = bad_labels(source, name)
        bad += split_bad
        positions = np.flatnonzero(good)
        pools[name] = (positions, labels[positions])
    total = sum(len(labels) for _, labels in source.splits.values())
    check_bad_items(bad, total, config.max_bad_fraction, f"{source.name} images")
    if total - len(bad) == 0:
        raise DataSourceError(f"{source.name}: the source holds no usable images")
    members = make_splits(pools, config.validation_fraction, config.test_fraction, config.seed)

    converted = {name: convert_batch(images, config.color_mode)
                 for name, (images, _) in source.splits.items()}
    plan = {split: (indices, converted[pool][indices], source.splits[pool][1][indices])
            for split, (pool, indices) in members.items()}
    return source, bad, total, plan


def split_arrays(config: DataConfig) -> dict:
    """The splits `prepare` would write for an array source, in memory instead:
    {split: (indices, images N x H x W x C uint8, labels int32)}, the shape
    ``training.pipeline.read_shard`` returns. For baselines that must see exactly the data a
    prepared dataset holds."""
    from nnfund_spark.data.schema import as_hwc

    _, _, _, plan = _array_plan(config)
    return {split: (np.asarray(indices, np.int64), as_hwc(images), labels.astype(np.int32))
            for split, (indices, images, labels) in plan.items()}


def _prepare_arrays(spark, config: DataConfig, staging: Location) -> dict:
    """IDX / CIFAR-10 / digits: load on the driver, split there, encode and write on Spark."""
    source, bad, total, plan = _array_plan(config)
    height, width, channels = plan["train"][1].shape[1:]
    schema = image_schema(height, width, channels, config.image_codec)
    files = write_array_splits(spark, staging, schema, plan, config.row_group_size_mb,
                               config.min_row_groups)

    mean, std = stats_from_histograms(channel_histograms(plan["train"][1]))
    splits = {split: split_entry(indices, labels, source.class_names, files[split])
              for split, (indices, _, labels) in plan.items()}
    source_entry = {"name": source.name, **source.info,
                    "checksum_sha256": source.checksum_sha256,
                    "checksums_verified": source.checksums_verified, "limit": config.limit}
    return build_manifest(config, source_entry, source.class_names, [height, width, channels],
                          splits, mean, std, skipped_summary(bad, total, config.max_bad_fraction),
                          "official" if "test" in source.splits else "stratified")
