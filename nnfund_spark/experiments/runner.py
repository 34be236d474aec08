"""Run a sweep: a parent MLflow run, each trial a nested child run, then the comparison."""
from __future__ import annotations

import logging
import traceback

from nnfund_spark.experiments.sweep import (Sweep, best_trial, comparison_rows, rows_to_csv,
                                            rows_to_markdown)
from nnfund_spark.tracking.mlflow_utils import (error_text, redact_uri, resolve_tracking_uri,
                                                start_job_run)

log = logging.getLogger(__name__)


class SweepFailedError(RuntimeError):
    pass


def _finished_earlier(trial) -> dict | None:
    """With train.resume=true a sweep resumes trial by trial, each from its own checkpoint
    subdirectory: a trial that never wrote a checkpoint starts fresh (its train.resume is set
    false), an interrupted one continues its own MLflow run, and one whose checkpoints already
    hold a finished run (all epochs, or a met target or early-stopping rule) is not trained
    again. Returns such a trial's SKIPPED result (why, and its checkpointed history and run),
    else None."""
    from nnfund_spark.data.storage import local_path
    from nnfund_spark.training import checkpoint
    from nnfund_spark.training.launcher import refuse_finished

    train = trial.config.train
    meta = checkpoint.latest(local_path(train.checkpoint_dir))
    if meta is None:
        train.resume = False
        return None
    try:
        refuse_finished(train, meta)
    except ValueError as exc:
        # Not a candidate for the best trial: this sweep has no test metrics or model of it.
        return {"trial": trial.name, "status": "SKIPPED",
                "error": redact_uri(f"{exc} (MLflow run {meta['mlflow_run_id']})"),
                "run_id": meta["mlflow_run_id"], "history": meta.get("history") or {}}
    return None


def run_sweep(spark, sweep: Sweep) -> dict:
    """Train every trial (in order; a failed trial is recorded and the sweep goes on), log the
    comparison figure and tables on the parent, optionally register the best model.
    Raises SweepFailedError at the end if any trial failed (the parent run ends FAILED)."""
    import matplotlib.pyplot as plt
    import mlflow

    from nnfund_spark.tracking.artifacts import comparison_figure
    from nnfund_spark.training.launcher import preflight, resume_point, run_training

    # A trial whose config cannot train on its dataset (an empty split it needs, a model that
    # does not fit the images) or whose checkpoint subdirectory it cannot use (another run's
    # checkpoints without resume) is refused with the others before the sweep starts, not hours
    # into it.
    refused, skipped = [], {}
    for trial in sweep.trials:
        try:
            preflight(trial.config)
            train = trial.config.train
            if train.resume and train.checkpoint_dir:
                finished = _finished_earlier(trial)
                if finished:
                    skipped[trial.name] = finished
                    continue
            resume_point(train)
        except (ValueError, FileNotFoundError) as exc:
            refused.append(f"{trial.name}: {redact_uri(str(exc))}")
    if refused:
        raise ValueError(f"{len(refused)} of {len(sweep.trials)} trials cannot run; nothing "
                         f"was trained: " + "; ".join(refused))
    first = sweep.trials[0].config
    tracking_uri = resolve_tracking_uri(first.tracking)
    results = []
    with start_job_run(first.tracking, tracking_uri, run_name=f"sweep:{sweep.name}") as parent:
        mlflow.set_tags({"sweep.name": sweep.name, "sweep.trials": len(sweep.trials),
                         "sweep.varied_keys": ",".join(sweep.varied_keys),
                         "sweep.base": str(sweep.base or "")})
        for trial in sweep.trials:
            trial.config.tracking.experiment = first.tracking.experiment
            trial.config.tracking.tracking_uri = tracking_uri
            if trial.name in skipped:
                log.warning("sweep %s: trial %s not trained again: %s", sweep.name, trial.name,
                            skipped[trial.name]["error"])
                results.append(skipped[trial.name])
                continue
            log.info("sweep %s: trial %s", sweep.name, trial.name)
            try:
                summary = run_training(spark, trial.config, run_name=trial.name)
            except Exception as exc:  # recorded in the table and re-raised below
                # Type and message (KeyError('history') is just 'history' as a str), without
                # the credentials a quoted location can hold; the traceback goes to the log.
                error = error_text(exc, 5000)
                log.error("trial %s failed: %s\n%s", trial.name, error,
                          redact_uri("".join(traceback.format_exception(exc))))
                results.append({"trial": trial.name, "status": "FAILED", "error": error})
                continue
            mlflow.MlflowClient(tracking_uri).set_tag(summary["run_id"], "sweep.trial", trial.name)
            results.append({"trial": trial.name, "status": "FINISHED", **summary})

        rows = comparison_rows(results)
        mlflow.log_text(rows_to_csv(rows), "comparison/final_metrics.csv")
        mlflow.log_text(rows_to_markdown(rows), "comparison/final_metrics.md")
        histories = {r["trial"]: r["history"] for r in results if r["status"] == "FINISHED"}
        if histories:
            figure = comparison_figure(histories, f"sweep {sweep.name}: loss per epoch "
                                                  f"(solid train, dashed validation)")
            mlflow.log_figure(figure, "comparison/loss_curves.png")
            plt.close(figure)
        best = best_trial(results, sweep.select_metric)
        if best is None:
            log.warning("no finished trial reported a number for %s (select_metric): no best "
                        "trial chosen%s", sweep.select_metric,
                        ", nothing registered" if sweep.register_best else "")
        else:
            mlflow.set_tags({"sweep.best_trial": best["trial"], "sweep.best_run_id": best["run_id"]})
            if best.get("test_accuracy") is not None:  # None: the dataset has no test split
                mlflow.log_metric("best_test_accuracy", best["test_accuracy"])
            if sweep.register_best and best.get("model_uri"):
                version = mlflow.register_model(best["model_uri"], sweep.register_best)
                mlflow.set_tag("sweep.registered_model",
                               f"{sweep.register_best} v{version.version}")
        failed = [r for r in results if r["status"] == "FAILED"]
        if failed:
            raise SweepFailedError(f"{len(failed)} of {len(results)} trials failed: "
                                   + "; ".join(f"{r['trial']}: {r['error']}" for r in failed))
    return {"parent_run_id": parent.info.run_id, "tracking_uri": tracking_uri, "rows": rows,
            "best_trial": best["trial"] if best else None}

