"""One policy for bad input items, whatever the source: fail by default, naming the first few
items and the count; with ``data.max_bad_fraction`` skip up to that share and list them.

An *item* is one image (a file in an image folder, a row of an IDX/CIFAR file). Problems with a
whole source (a missing directory, a truncated IDX file, no classes at all) are not items: they
always fail, because skipping them would silently change what the dataset is.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from nnfund_spark.data.idx import DataSourceError

# How many bad items an error message names; the manifest lists up to MAX_LISTED of them.
SHOWN_IN_ERROR = 5
# Bounded so a 1M-image folder with 1% junk still gives a readable manifest; the count and the
# per-reason counts are always complete.
MAX_LISTED = 10_000

# Reasons (the `kind` of a bad item), each with what is accepted instead.
EMPTY_FILE = "empty file"
UNSUPPORTED_FORMAT = "unsupported format"
CORRUPT = "corrupt or truncated"
TOO_LARGE = "too large"
WRONG_CHANNELS = "wrong channel count"
LABEL_OUT_OF_RANGE = "label out of range"
NOT_IN_CLASS_FOLDER = "not in a class folder"


class BadInputError(DataSourceError):
    """Bad input items exceed data.max_bad_fraction; the message names the first few."""


@dataclass(frozen=True, order=True)
class BadItem:
    item: str     # file path or "<file>[row]", what a user can find and fix
    kind: str     # one of the reasons above
    detail: str   # what exactly is wrong and what is accepted


def check_bad_items(bad: list[BadItem], total: int, max_bad_fraction: float, what: str) -> None:
    """Raise BadInputError unless len(bad) / total <= max_bad_fraction (0 = no bad item at all).

    `total` counts every item that was considered, good or bad, so the fraction is of the input.
    """
    if not bad:
        return
    bad = sorted(bad)
    fraction = len(bad) / max(total, 1)
    if fraction <= max_bad_fraction:
        return
    shown = "; ".join(f"{b.item}: {b.kind} ({b.detail})" for b in bad[:SHOWN_IN_ERROR])
    more = f"; and {len(bad) - SHOWN_IN_ERROR} more" if len(bad) > SHOWN_IN_ERROR else ""
    kinds = ", ".join(f"{k}: {n}" for k, n in sorted(Counter(b.kind for b in bad).items()))
    if max_bad_fraction > 0:
        policy = f"above data.max_bad_fraction={max_bad_fraction}"
    else:
        policy = "data.max_bad_fraction=0 allows none; set it to skip bad items up to that share"
    raise BadInputError(f"{len(bad)} of {total} {what} are bad ({fraction:.2%}; {kinds}; "
                        f"{policy}): {shown}{more}")


def skipped_summary(bad: list[BadItem], total: int, max_bad_fraction: float) -> dict:
    """The manifest's `skipped` entry: complete counts, and the items themselves (bounded)."""
    bad = sorted(bad)
    return {
        "count": len(bad),
        "of_total": total,
        "max_bad_fraction": max_bad_fraction,
        "by_reason": dict(sorted(Counter(b.kind for b in bad).items())),
        "items": [{"item": b.item, "reason": b.kind, "detail": b.detail}
                  for b in bad[:MAX_LISTED]],
        "items_truncated": len(bad) > MAX_LISTED,
    }
