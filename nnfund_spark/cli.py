"""`nnfund-spark` command line: the one door for spark-submit jobs, the console script and the
Databricks wheel task. Each subcommand parses config, builds the session, calls one library
function and stops the session in `finally`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from nnfund_spark.config import ConfigError, load_config

log = logging.getLogger("nnfund_spark")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnfund-spark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("prepare", "prepare a raw image source into Petastorm splits"),
                            ("train", "train a Keras model with Horovod on Spark"),
                            ("sweep", "train every trial of a sweep file, compared in MLflow"),
                            ("predict", "score a prepared split with a logged MLflow model")):
        cmd = sub.add_parser(name, help=help_text)
        if name == "sweep":
            cmd.add_argument("-c", "--config", required=True,
                             help="sweep file, e.g. conf/experiments/optimizers.yaml")
        else:
            cmd.add_argument("-c", "--config", help="YAML config file (only what differs from "
                                                    "the defaults); e.g. conf/mnist.yaml")
        cmd.add_argument("--set", dest="overrides", action="append", default=[],
                         metavar="KEY=VALUE", help="dotted override, e.g. train.epochs=2; repeatable")
        cmd.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
        cmd.add_argument("--print-config", action="store_true",
                         help="print the resolved config as JSON and exit")
        if name == "train":
            cmd.add_argument("--summary-json", metavar="PATH",
                             help="also write the job's summary (run id, model URI, test "
                                  "metrics, per-epoch history, per-rank timings) as JSON")
        if name == "prepare":
            cmd.add_argument("--overwrite", action="store_true",
                             help="replace an existing dataset at data.output_dir")
        if name == "predict":
            from nnfund_spark.inference.cli_args import add_predict_arguments
            add_predict_arguments(cmd)
    bench = sub.add_parser("benchmark", help="time-to-accuracy, throughput, scaling and "
                                             "prepare figures against plain Keras/pyarrow")
    bench.add_argument("--quick", action="store_true",
                       help="a smoke run on a few thousand images (targets shown as n/a)")
    bench.add_argument("--output", help="where benchmark.json and benchmark.md go "
                                         "(default: benchmark-results, or "
                                         "benchmark-results-quick with --quick)")
    bench.add_argument("--work-dir", help="datasets, logs and per-step JSON "
                                          "(default: <output>/work)")
    bench.add_argument("--keep-datasets", action="store_true",
                       help="keep the prepared datasets in the work dir (logs are always kept)")
    bench.add_argument("--mnist-raw", default="data/raw/mnist")
    bench.add_argument("--fashion-raw", default="data/raw/fashion_mnist")
    bench.add_argument("--master", default="local[2]", help="Spark master of every job")
    bench.add_argument("--tracking-uri", help="MLflow store for the jobs and the summary run "
                                              "(default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    bench.add_argument("--no-tracking", action="store_true",
                       help="no summary run; the jobs' runs go to a store in the work dir")
    return parser


def _benchmark(args) -> int:
    from nnfund_spark.benchmark.suite import (BenchmarkError, BenchmarkPlan, remove_datasets,
                                              run_benchmark)
    from nnfund_spark.config import TrackingConfig
    from nnfund_spark.tracking.mlflow_utils import resolve_tracking_uri

    # a quick run never replaces a full run's figures unless told to
    output = Path(args.output or ("benchmark-results-quick" if args.quick
                                  else "benchmark-results")).resolve()
    work_dir = Path(args.work_dir).resolve() if args.work_dir else output / "work"
    if args.no_tracking:
        tracking_uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    else:
        tracking_uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri))
        if tracking_uri.startswith("sqlite:///") and \
                not Path(tracking_uri[len("sqlite:///"):]).is_absolute():
            # The jobs run in the work dir: a relative store would split the runs in two.
            tracking_uri = f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve()}"
    plan = BenchmarkPlan.for_mode(args.quick, mnist_raw=args.mnist_raw,
                                  fashion_raw=args.fashion_raw, master=args.master)
    try:
        results = run_benchmark(plan, work_dir, output, tracking_uri,
                                log_summary=not args.no_tracking)
    except (BenchmarkError, ValueError, FileNotFoundError) as exc:
        print(f"nnfund-spark benchmark: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_datasets:
            remove_datasets(work_dir)
    from nnfund_spark.benchmark.suite import to_markdown
    print(to_markdown(results))
    print(f"figures: {output / 'benchmark.json'}, {output / 'benchmark.md'}; "
          f"logs: {work_dir / 'logs'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up banners, not errors
    args = _parser().parse_args(argv)
    # Our own progress at INFO; Spark/py4j/Horovod chatter only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if args.command == "benchmark":
        return _benchmark(args)
    overrides = list(args.overrides)
    sweep = predict_config = None  # set for their own commands only
    if getattr(args, "overwrite", False):
        overrides.append("data.overwrite=true")
    try:
        if args.command == "sweep":
            from nnfund_spark.experiments.sweep import load_sweep
            sweep = load_sweep(args.config, overrides)
            config = sweep.trials[0].config
        else:
            config = load_config(args.config, overrides)
        if args.command == "predict":
            from nnfund_spark.inference.cli_args import predict_config_from_args
            predict_config = predict_config_from_args(args, config)
    except ConfigError as exc:
        print(f"nnfund-spark: config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        from nnfund_spark.config import to_dict
        if args.command == "sweep":
            print(json.dumps({t.name: to_dict(t.config) for t in sweep.trials}, indent=2))
        else:
            print(json.dumps(to_dict(config), indent=2))
        return 0

    if args.command == "prepare":
        from nnfund_spark.data.prepare import check_output
        try:  # the output's own refusals need no Spark: give them without its start-up
            check_output(config.data)
        except (ValueError, FileExistsError) as exc:
            from nnfund_spark.tracking.mlflow_utils import redact_uri
            print(f"nnfund-spark prepare: error: {redact_uri(str(exc))}", file=sys.stderr)
            return 1
    from nnfund_spark import databricks
    from nnfund_spark.spark import build_session
    if args.command in ("train", "sweep"):
        from nnfund_spark.training.launcher import start_horovod_build_check
        start_horovod_build_check(config.train.controller)  # overlaps the Spark start-up below
    spark = build_session(config.spark, args.master)
    on_databricks = databricks.is_databricks(os.environ)
    if on_databricks:
        # Workspace tracking server and an experiment under the user's workspace folder,
        # unless the config or MLFLOW_TRACKING_URI chose otherwise; each trial keeps its own
        # tracking settings (log_model, log_artifacts, run_name).
        targets = [t.config for t in sweep.trials] if args.command == "sweep" else [config]
        snapshot = databricks.spark_conf_snapshot(spark)
        try:
            for target in targets:
                target.tracking = databricks.databricks_tracking(target.tracking, os.environ,
                                                                 snapshot)
        except ValueError as exc:  # e.g. an experiment name Databricks cannot place
            print(f"nnfund-spark: config error: tracking.experiment: {exc}", file=sys.stderr)
            return 2
        if args.command == "predict" and predict_config.tracking_uri is None:
            predict_config = dataclasses.replace(predict_config,
                                                 tracking_uri=config.tracking.tracking_uri)
        try:
            paths, tracking = _locations_both_sides_use(
                args.command, config, sweep, predict_config,
                given_dataset_dir=getattr(args, "dataset_dir", None))
            databricks.check_shared_locations(paths, os.environ, spark.sparkContext.master,
                                              tracking)
        except ValueError as exc:
            print(f"nnfund-spark: config error: {exc}", file=sys.stderr)
            return 2
    try:
        if args.command == "prepare":
            from nnfund_spark.data.prepare import prepare_dataset
            manifest = prepare_dataset(spark, config.data)
            counts = {split: info["count"] for split, info in manifest["splits"].items()}
            print(f"prepared {manifest['source']['name']} into {config.data.output_dir}: {counts}")
        elif args.command == "sweep":
            from nnfund_spark.experiments.runner import run_sweep
            from nnfund_spark.experiments.sweep import rows_to_markdown
            summary = run_sweep(spark, sweep)
            print(rows_to_markdown(summary["rows"]))
            print(f"best trial: {summary['best_trial']} (parent MLflow run "
                  f"{summary['parent_run_id']})")
            print(_ui_hint(summary["tracking_uri"]))
        elif args.command == "predict":
            from nnfund_spark.inference import format_summary, run_predict
            print(format_summary(run_predict(spark, predict_config)))
        else:
            from nnfund_spark.databricks import publish_task_value
            from nnfund_spark.training.launcher import run_training
            summary = run_training(spark, config)
            if args.summary_json:
                _write_json(args.summary_json, summary)
            # Databricks multi-task jobs: the predict task reads the trained model's URI.
            publish_task_value("model_uri", summary["model_uri"] or "")
            if summary["test_count"]:
                print(f"test accuracy: {summary['test_accuracy']:.4f} "
                      f"({summary['test_count']} test images, MLflow run {summary['run_id']})")
            else:
                print(f"no test split to evaluate (MLflow run {summary['run_id']})")
            print(_ui_hint(summary["tracking_uri"]))
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as exc:
        from nnfund_spark.tracking.mlflow_utils import redact_uri
        message = redact_uri(str(exc))  # it can quote a location with inline credentials
        print(f"nnfund-spark {args.command}: error: {message}", file=sys.stderr)
        return 1
    except Exception:  # e.g. an executor's PythonException: keep the whole traceback
        import traceback

        from nnfund_spark.tracking.mlflow_utils import redact_uri
        # ... without the inline credentials a quoted location may hold
        log.error("%s failed:\n%s", args.command, redact_uri(traceback.format_exc()))
        return 1
    finally:
        # Databricks owns its job cluster's SparkContext; stopping it fails later tasks.
        if not on_databricks:
            spark.stop()
    return 0


def _locations_both_sides_use(command: str, config, sweep, predict_config,
                              given_dataset_dir=None) -> tuple[dict, dict]:
    """(paths, tracking URIs) a job's driver and executors must both reach, each under the
    name a user sets it by."""
    if command == "predict":
        dataset = "--dataset-dir" if given_dataset_dir else "data.output_dir"
        return {dataset: predict_config.dataset_dir,
                "--output-dir": predict_config.output_dir}, {}
    if command == "prepare":
        found = {"data.output_dir": config.data.output_dir}
        if config.data.source == "image_folder":  # the executors read the image files
            found["data.raw_dir"] = config.data.raw_dir
        return found, {}
    from nnfund_spark.tracking.mlflow_utils import resolve_tracking_uri

    targets = [(f"{t.name}: ", t.config) for t in sweep.trials] if command == "sweep" \
        else [("", config)]
    paths, tracking = {}, {}
    for prefix, target in targets:
        # rank 0 writes checkpoints and MLflow records from an executor; the driver reads them
        paths.update({prefix + "data.output_dir": target.data.output_dir,
                      prefix + "train.checkpoint_dir": target.train.checkpoint_dir})
        tracking[prefix + "tracking.tracking_uri"] = resolve_tracking_uri(target.tracking)
    return paths, tracking


def _ui_hint(tracking_uri: str) -> str:
    """Where to look at the runs, without any credentials the URI holds."""
    from nnfund_spark.tracking.mlflow_utils import redact_uri

    if tracking_uri.startswith("databricks"):
        return "MLflow UI: the Databricks workspace's Experiments page"
    if tracking_uri.startswith(("http://", "https://")):
        return f"MLflow UI: {redact_uri(tracking_uri)} (the tracking server's own UI)"
    # the mlflow script beside this Python (.venv/bin/mlflow) when there is one: a virtualenv's
    # bin is on nobody's PATH unless activated
    script = Path(sys.executable).parent / "mlflow"
    mlflow = str(script) if script.is_file() else "mlflow"
    return f"MLflow UI: {mlflow} ui --backend-store-uri {redact_uri(tracking_uri)}"


def _write_json(path: str, value) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    from nnfund_spark.data.storage import write_text_atomic

    write_text_atomic(path, json.dumps(value, indent=2, default=str))


def run() -> None:
    """Console-script and Databricks wheel-task entry point: the exit code is the process's,
    so a failed job fails its task even where a returned value would be ignored."""
    sys.exit(main())


if __name__ == "__main__":
    run()
