"""nnfund_spark: deep-learning fundamentals as distributed jobs on Spark."""
__version__ = "0.1.0"
