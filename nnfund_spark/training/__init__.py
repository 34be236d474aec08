"""Horovod-on-Spark training: the launcher (driver side) and the per-rank worker function."""
