"""Run a sweep: a parent MLflow run, each trial a nested child run, then the comparison."""
from __future__ import annotations

import logging

from nnfund_spark.experiments.sweep import (Sweep, best_trial, comparison_rows, rows_to_csv,
                                            rows_to_markdown)
from nnfund_spark.tracking.mlflow_utils import redact_uri, resolve_tracking_uri, start_job_run

log = logging.getLogger(__name__)


class SweepFailedError(RuntimeError):
    pass


def run_sweep(spark, sweep: Sweep) -> dict:
    """Train every trial (in order; a failed trial is recorded and the sweep goes on), log the
    comparison figure and tables on the parent, optionally register the best model.
    Raises SweepFailedError at the end if any trial failed (the parent run ends FAILED)."""
    import matplotlib.pyplot as plt
    import mlflow

    from nnfund_spark.tracking.artifacts import comparison_figure
    from nnfund_spark.training.launcher import preflight, run_training

    # A trial whose config cannot train on its dataset (an empty split it needs, a model that
    # does not fit the images) is refused with the others before the sweep starts, not hours
    # into it.
    refused = []
    for trial in sweep.trials:
        try:
            preflight(trial.config)
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
            log.info("sweep %s: trial %s", sweep.name, trial.name)
            try:
                summary = run_training(spark, trial.config, run_name=trial.name)
            except Exception as exc:  # recorded in the table and re-raised below
                error = redact_uri(str(exc))  # it can quote a location with credentials
                log.error("trial %s failed: %s", trial.name, error)
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
        failed = [r["trial"] for r in results if r["status"] != "FINISHED"]
        if failed:
            raise SweepFailedError(f"{len(failed)} of {len(results)} trials failed: "
                                   + "; ".join(f"{r['trial']}: {r['error']}" for r in results
                                               if r["status"] != "FINISHED"))
    return {"parent_run_id": parent.info.run_id, "tracking_uri": tracking_uri, "rows": rows,
            "best_trial": best["trial"] if best else None}
