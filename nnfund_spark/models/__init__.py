"""The model zoo: Keras 2 (tf.keras) builders keyed by name."""
from nnfund_spark.models.zoo import MODELS, build_model

__all__ = ["MODELS", "build_model"]
