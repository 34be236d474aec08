"""Deterministic stratified splits: the same labels, fractions and seed give the same members on
any machine (numpy's PCG64 is specified bit for bit)."""
from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed) -> tuple[np.ndarray, np.ndarray]:
    """Split positions 0..N-1 into (keep, held_out), holding out `fraction` of every class.

    Depends only on labels, fraction and seed (an int or a sequence of ints), so the same seed
    gives the same membership on any machine. Both index arrays come back sorted.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    held_out = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        count = int(round(len(members) * fraction))
        held_out.append(rng.permutation(members)[:count])
    held = np.sort(np.concatenate(held_out)) if held_out else np.array([], dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(labels)), held, assume_unique=True)
    return keep, held


def make_splits(pools: dict, validation_fraction: float, test_fraction: float, seed: int
                ) -> dict:
    """{split: (pool, item indices)} for train / validation / test.

    `pools` maps "train" (and "test" when the source has an official test split) to
    (item indices, labels) of the usable items. An official test pool is kept whole; otherwise
    a stratified test_fraction of the train pool becomes test (drawn with a seed derived from
    `seed`, so it never correlates with the validation draw), then validation_fraction of what
    remains becomes validation.
    """
    indices, labels = pools["train"]
    if "test" in pools:
        test = ("test", np.asarray(pools["test"][0]))
    else:
        rest, held = stratified_split(labels, test_fraction, [seed, 1])
        test = ("train", indices[held])
        indices, labels = indices[rest], labels[rest]
    keep, held = stratified_split(labels, validation_fraction, seed)
    return {"train": ("train", indices[keep]), "validation": ("train", indices[held]),
            "test": test}
