"""Per-epoch checkpoints, written by rank 0 atomically, read by every rank on resume.

Layout: <dir>/epoch-0003/{state.index,state.data-*,meta.json} and <dir>/latest holding the name
of the newest complete checkpoint. A checkpoint directory is renamed into place only when it is
complete, and `latest` is replaced atomically, so a crash mid-write leaves the previous one valid.
The directory must be visible to every rank (local disk in local mode; DBFS/NFS on clusters).
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

KEEP = 2  # newest checkpoints kept; older ones are deleted after a successful write


def latest(directory: str | Path) -> Optional[dict]:
    """Metadata of the newest complete checkpoint in directory (with its path), or None."""
    pointer = Path(directory) / "latest"
    if not pointer.is_file():
        return None
    name = "?"
    try:
        name = pointer.read_text().strip()
        path = Path(directory) / name
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("epoch"), int):
            raise ValueError("it holds no epoch count")
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{directory}: 'latest' names the checkpoint {name!r}, whose meta.json "
                         f"cannot be read ({exc}); the directory was changed by something else "
                         f"than a training run: point train.checkpoint_dir elsewhere or repair "
                         f"'latest'") from exc
    meta["path"] = str(path)
    return meta


def save(directory: str | Path, epoch: int, model, history: dict, run_id: Optional[str],
         shape: Optional[dict] = None, recipe: Optional[dict] = None) -> Path:
    """Write model + optimizer state after `epoch` (1-based count of completed epochs).
    `shape` (world_size, batch_size, steps_per_epoch) is what the learning-rate schedule and the
    optimizer's step count were laid out for; a resume must match it. `recipe`: the train.*
    settings that define what is trained (launcher.training_recipe), which a resume must keep."""
    import tensorflow as tf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}"
    staging = directory / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(staging / "state"))
        (staging / "meta.json").write_text(json.dumps(
            {"epoch": epoch, "history": history, "mlflow_run_id": run_id,
             "shape": shape or {}, "recipe": recipe}, indent=2))
        # On disk before any name points at it: after a crash of the node, 'latest' never
        # names a checkpoint whose files were still only in the page cache.
        _sync(*staging.rglob("*"), staging)
        final = directory / name
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        _sync(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    pointer_tmp = directory / f".latest.tmp-{uuid.uuid4().hex[:8]}"
    pointer_tmp.write_text(name + "\n")
    _sync(pointer_tmp)
    os.replace(pointer_tmp, directory / "latest")
    _sync(directory)
    for old in sorted(directory.glob("epoch-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _sync(*paths: Path) -> None:
    """fsync files and directories (a directory's fsync makes the renames in it durable)."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def restore(path: str | Path, model) -> None:
    """Load model weights and optimizer state (slots, iteration count) from a checkpoint."""
    import tensorflow as tf

    # The optimizer's slot variables must exist before they can be filled.
    model.optimizer.build(model.trainable_variables)
    status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
        str(Path(path) / "state"))
    status.assert_existing_objects_matched()
