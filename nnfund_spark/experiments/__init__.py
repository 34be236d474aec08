"""Experiments: sweeps of training jobs compared under one MLflow parent run."""
