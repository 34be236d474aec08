"""What the driver logs into a training run once the ranks are done."""
from __future__ import annotations

import json

import numpy as np

from nnfund_spark.tracking import artifacts


def log_training_artifacts(model, history: dict, confusion, class_names: list[str],
                           images: np.ndarray, activation: str = "relu",
                           activation_params: dict | None = None) -> None:
    """Learning curves, confusion matrix (figure + CSV; skipped when `confusion` is None: no
    test split), model summary, and for CNNs the first layer's filters and every conv layer's
    activation maps (with min/max) on a few sample `images`."""
    import matplotlib.pyplot as plt
    import mlflow

    figure = artifacts.learning_curves_figure(history)
    mlflow.log_figure(figure, "plots/learning_curves.png")
    plt.close(figure)
    if confusion is not None:
        confusion = np.asarray(confusion)
        figure = artifacts.confusion_matrix_figure(confusion, class_names)
        mlflow.log_figure(figure, "plots/confusion_matrix.png")
        plt.close(figure)
        mlflow.log_text(artifacts.confusion_matrix_csv(confusion, class_names),
                        "tables/confusion_matrix.csv")
    mlflow.log_text(artifacts.model_summary_text(model), "model_summary.txt")
    from nnfund_spark.tracking.plots import activation_curves_figure
    figure = activation_curves_figure([activation], {activation: activation_params or {}})
    mlflow.log_figure(figure, f"plots/activation_{activation}.png")
    plt.close(figure)

    figure = artifacts.first_layer_filters_figure(model)
    if figure is not None:
        mlflow.log_figure(figure, "convolutions/first_layer_filters.png")
        plt.close(figure)
        figure, stats = artifacts.activation_maps_figure(model, images)
        mlflow.log_figure(figure, "convolutions/activation_maps.png")
        plt.close(figure)
        mlflow.log_text(json.dumps(stats, indent=2), "convolutions/activation_stats.json")
