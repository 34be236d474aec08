"""Sweeps: one parent MLflow run, one nested child run per trial, a comparison at the end.

A sweep file (conf/experiments/*.yaml)::

    name: optimizers
    base: ../mnist_mlp.yaml        # a job config, relative to this file
    set: {train.epochs: 5}         # overrides shared by every trial
    axes:                          # grid: every combination is a trial
      train.optimizer: [adam, sgd]
    trials:                        # or/and explicit trials (e.g. an optimizer with its own rate)
      - {name: sgd, set: {train.optimizer: sgd, train.learning_rate: 0.1}}
    select_metric: val_accuracy    # how the best trial is chosen (higher is better)
    register_best: null            # a Model Registry name to register the best trial's model

Trials differ only in the keys their axis or trial entry sets: same data, seed and budget.
"""
from __future__ import annotations

import csv
import io
import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from nnfund_spark.config import ConfigError, JobConfig, load_config

log = logging.getLogger(__name__)

_KNOWN_KEYS = {"name", "base", "set", "axes", "trials", "select_metric", "register_best"}
# Metrics where lower is better; everything else (accuracies) is maximised.
_LOWER_IS_BETTER = {"val_loss", "test_loss", "loss"}
# What select_metric may name: a trial's last-epoch metric or its final test evaluation.
SELECT_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss", "test_accuracy", "test_loss")


@dataclass
class Trial:
    name: str
    overrides: dict
    config: JobConfig


@dataclass
class Sweep:
    name: str
    base: Optional[object]  # a Path, or a Traversable inside an installed wheel
    trials: list[Trial] = field(default_factory=list)
    varied_keys: list[str] = field(default_factory=list)
    select_metric: str = "val_accuracy"
    register_best: Optional[str] = None


def _as_overrides(values: dict, where: str) -> list[str]:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values, got {values!r}")
    return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]


def _relative(sweep_file, relative: str):
    """`base:` resolved against the sweep file's folder (a Path, or a zip-backed Traversable
    when the sweep ships inside a wheel on --py-files)."""
    if isinstance(sweep_file, Path):
        return (sweep_file.parent / relative).resolve()
    target = sweep_file.parent
    for part in Path(relative).parts:
        target = target.parent if part == ".." else target.joinpath(part)
    return target


def load_sweep(path: str | Path, extra_overrides: list[str] = ()) -> Sweep:
    """Read and validate a sweep file; every trial's config is built (and so validated) here,
    before anything trains."""
    from nnfund_spark.config import load_yaml, resolve_config_path
    path = resolve_config_path(path)
    try:
        spec = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys "
                          f"{', '.join(sorted(_KNOWN_KEYS))}; got a {type(spec).__name__}")
    unknown = set(spec) - _KNOWN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))}; "
                          f"valid: {', '.join(sorted(_KNOWN_KEYS))}")
    base = _relative(path, spec["base"]) if spec.get("base") else None
    shared = _as_overrides(spec.get("set") or {}, f"{path}: set") + list(extra_overrides)

    entries: list[tuple[str, dict]] = []
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict) or any(not isinstance(v, list) or not v for v in axes.values()):
        raise ConfigError(f"{path}: axes must map dotted keys to non-empty lists of values")
    if axes:
        keys = list(axes)
        for values in itertools.product(*(axes[k] for k in keys)):
            chosen = dict(zip(keys, values))
            entries.append((",".join(f"{k.split('.')[-1]}={v}" for k, v in chosen.items()), chosen))
    for index, trial in enumerate(spec.get("trials") or []):
        if not isinstance(trial, dict) or set(trial) - {"name", "set"} or "set" not in trial:
            raise ConfigError(f"{path}: trials[{index}] must be a mapping with 'set' and an "
                              f"optional 'name'")
        entries.append((str(trial.get("name") or f"trial{index}"), trial["set"]))
    if not entries:
        raise ConfigError(f"{path}: a sweep needs 'axes' or 'trials'")
    names = [name for name, _ in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: trial names must be unique, got {names}")

    select_metric = spec.get("select_metric") or "val_accuracy"
    if select_metric not in SELECT_METRICS:
        raise ConfigError(f"{path}: select_metric '{select_metric}' is not one of "
                          f"{', '.join(SELECT_METRICS)}")
    register_best = spec.get("register_best")
    if register_best is not None and (not isinstance(register_best, str) or not register_best):
        raise ConfigError(f"{path}: register_best must be a Model Registry name (a string) or "
                          f"null, got {register_best!r}")
    sweep = Sweep(name=str(spec.get("name") or path.stem), base=base,
                  select_metric=select_metric, register_best=register_best)
    varied: set[str] = set()
    for name, chosen in entries:
        try:
            config = load_config(base, shared + _as_overrides(chosen, f"trial {name}"))
        except ConfigError as exc:
            raise ConfigError(f"{path}: trial '{name}': {exc}") from exc
        if config.train.checkpoint_dir:
            config.train.checkpoint_dir = trial_checkpoint_dir(
                config.train.checkpoint_dir, name, f"{path}: trial '{name}'")
        sweep.trials.append(Trial(name, dict(chosen), config))
        varied.update(chosen)
    sweep.varied_keys = sorted(varied)
    return sweep


def trial_checkpoint_dir(checkpoint_dir: str, name: str, where: str) -> str:
    """A trial's own checkpoint directory: <train.checkpoint_dir>/<trial name>, so trials never
    share (or resume) one another's checkpoints."""
    if "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"{where}: with train.checkpoint_dir set, the trial name is the "
                          f"name of its checkpoint subdirectory; '{name}' is not a directory "
                          f"name (no '/' or '\\', not '.' or '..'): list it under 'trials:' "
                          f"with such a 'name:'")
    return checkpoint_dir.rstrip("/") + "/" + name


def comparison_rows(results: list[dict]) -> list[dict]:
    rows = []
    for result in results:
        history = result.get("history") or {}
        rows.append({
            "trial": result["trial"], "status": result["status"],
            "test_accuracy": result.get("test_accuracy"), "test_loss": result.get("test_loss"),
            "final_val_accuracy": (history.get("val_accuracy") or [None])[-1],
            "final_val_loss": (history.get("val_loss") or [None])[-1],
            "final_train_loss": (history.get("loss") or [None])[-1],
            "epochs": len(history.get("loss") or []),
            "wall_seconds": result.get("wall_seconds"),
            "parameters": result.get("parameters"), "run_id": result.get("run_id"),
        })
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def rows_to_markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def best_trial(results: list[dict], metric: str) -> Optional[dict]:
    key = metric if metric.startswith("test_") else None
    scored = []
    for result in results:
        if result["status"] != "FINISHED":
            continue
        value = result.get(key) if key else (result["history"].get(metric) or [None])[-1]
        if value is not None and value == value:  # a diverged trial's nan never wins
            scored.append((value, result))
    if not scored:
        return None
    pick = min if metric in _LOWER_IS_BETTER else max
    return pick(scored, key=lambda pair: pair[0])[1]
