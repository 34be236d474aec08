"""Batch inference on Spark: score a prepared dataset split with a logged MLflow model.

    from nnfund_spark.inference import PredictConfig, run_predict
    summary = run_predict(spark, PredictConfig(model_uri="models:/mnist@champion",
                                               dataset_dir="data/petastorm/mnist",
                                               output_dir="out/predictions"))

The job body (run_predict and friends) is imported on first use, so the command line can build
its parser and validate a PredictConfig without loading Spark, Petastorm or MLflow.
"""
from nnfund_spark.inference.cli_args import add_predict_arguments, predict_config_from_args
from nnfund_spark.inference.config import MLFLOW_RUN_CHOICES, PredictConfig
from nnfund_spark.inference.model import ACCEPTED_MODEL_URIS, ModelRef, parse_model_uri

_JOB = {"run_predict", "format_summary", "resolve_split"}

__all__ = ["ACCEPTED_MODEL_URIS", "MLFLOW_RUN_CHOICES", "ModelRef", "OutputExistsError",
           "PredictConfig", "add_predict_arguments", "format_summary", "parse_model_uri",
           "predict_config_from_args", "resolve_split", "run_predict"]


def __getattr__(name: str):
    if name in _JOB:
        from nnfund_spark.inference import predict
        return getattr(predict, name)
    if name == "OutputExistsError":
        from nnfund_spark.inference.output import OutputExistsError
        return OutputExistsError
    raise AttributeError(f"module 'nnfund_spark.inference' has no attribute '{name}'")
