"""MLflow tracking: where runs go, what they record."""
from nnfund_spark.tracking.mlflow_utils import resolve_tracking_uri, start_job_run

__all__ = ["resolve_tracking_uri", "start_job_run"]
