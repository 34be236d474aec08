"""Figures and tables a training run logs to MLflow, computed on the driver from plain values.

Every function returns a matplotlib Figure (Agg backend, nothing shown) or text, so MLflow's
``log_figure`` / ``log_text`` take them directly and tests can inspect them.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def learning_curves_figure(history: dict, title: str = "learning curves"):
    """Train vs validation loss and accuracy per epoch: a widening gap means overfitting,
    two high flat curves mean underfitting."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            values = history.get(key)
            if values:
                axis.plot(range(1, len(values) + 1), values, style, label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_matrix_figure(matrix: np.ndarray, class_names: list[str]):
    """Rows are true classes, columns predicted; each cell shows its count."""
    matrix = np.asarray(matrix)
    size = max(4.0, 0.6 * len(class_names) + 2)
    fig, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        axis.text(col, row, str(int(count)), ha="center", va="center", fontsize=7,
                  color="white" if count > threshold else "black")
    accuracy = np.trace(matrix) / max(1, matrix.sum())
    axis.set_title(f"test confusion matrix (accuracy {accuracy:.4f})")
    fig.tight_layout()
    return fig


def confusion_matrix_csv(matrix: np.ndarray, class_names: list[str]) -> str:
    lines = ["true\\predicted," + ",".join(class_names)]
    for name, row in zip(class_names, np.asarray(matrix)):
        lines.append(name + "," + ",".join(str(int(v)) for v in row))
    return "\n".join(lines) + "\n"


def model_summary_text(model) -> str:
    buffer = io.StringIO()
    model.summary(print_fn=lambda line: buffer.write(line + "\n"), expand_nested=True)
    return buffer.getvalue()


def _conv_layers(model):
    return [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]


def first_layer_filters_figure(model):
    """The first conv layer's kernels, one tile per filter (input channels averaged), each
    scaled to its own min/max so the pattern it detects is visible."""
    convs = _conv_layers(model)
    if not convs:
        return None
    kernels = convs[0].get_weights()[0]  # (h, w, in_channels, filters)
    count = kernels.shape[-1]
    cols = min(8, count)
    rows = int(np.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows + 0.6), squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < count:
            axis.imshow(kernels[:, :, :, index].mean(axis=2), cmap="gray")
    fig.suptitle(f"{convs[0].name}: {count} filters {kernels.shape[0]}x{kernels.shape[1]}, "
                 f"weights in [{kernels.min():.3f}, {kernels.max():.3f}]")
    return fig


def _activated(layer):
    """The layer that ends a conv block: the zoo's blocks name the normalization and activation
    after their conv (``conv1`` -> ``conv1_bn`` -> ``conv1_leaky_relu``), so follow the single
    consumer while it carries that prefix. A conv with its activation folded in is its own end."""
    end = layer
    while len(end.outbound_nodes) == 1:
        following = end.outbound_nodes[0].outbound_layer
        if not following.name.startswith(f"{layer.name}_"):
            break
        end = following
    return end


def activation_maps(model, images: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Each conv block's activations (after its normalization and activation) for the given
    images: [(conv layer name, (N, H, W, C) array)]."""
    import tensorflow as tf
    convs = _conv_layers(model)
    if not convs:
        return []
    probe = tf.keras.Model(model.inputs, [_activated(layer).output for layer in convs])
    outputs = probe(images.astype(np.float32), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return [(layer.name, np.asarray(out)) for layer, out in zip(convs, outputs)]


def activation_maps_figure(model, images: np.ndarray, max_channels: int = 8):
    """The course's "convolutions at work" view: for each test image, the input and the first
    channels of every conv layer, with each layer's min/max. Returns (figure, stats dict)."""
    maps = activation_maps(model, images)
    if not maps:
        return None, {}
    rows = len(images)
    cols = 1 + len(maps) * max_channels
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 * cols, 1.0 * rows + 0.8), squeeze=False)
    stats = {}
    for row, image in enumerate(images):
        axes[row, 0].imshow(image[:, :, 0] if image.shape[-1] == 1 else image.astype(np.uint8),
                            cmap="gray")
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=7)
        for layer_index, (name, output) in enumerate(maps):
            for channel in range(max_channels):
                axis = axes[row, 1 + layer_index * max_channels + channel]
                if channel < output.shape[-1]:
                    axis.imshow(output[row, :, :, channel], cmap="viridis")
                if row == 0 and channel == 0:
                    axis.set_title(name, fontsize=7)
    for name, output in maps:
        stats[name] = {"min": float(output.min()), "max": float(output.max()),
                       "shape": list(output.shape[1:])}
    for axis in axes.flat:
        axis.axis("off")
    fig.suptitle("activation maps: " + "; ".join(
        f"{name} [{s['min']:.2f}, {s['max']:.2f}]" for name, s in stats.items()), fontsize=8)
    return fig, stats


def comparison_figure(histories: dict[str, dict], title: str):
    """Sweep view: every trial's train (solid) and validation (dashed) loss in one figure."""
    fig, axis = plt.subplots(figsize=(9, 5))
    for index, (name, history) in enumerate(histories.items()):
        color = f"C{index % 10}"
        if history.get("loss"):
            axis.plot(range(1, len(history["loss"]) + 1), history["loss"], "-", color=color,
                      label=f"{name} train")
        if history.get("val_loss"):
            axis.plot(range(1, len(history["val_loss"]) + 1), history["val_loss"], "--",
                      color=color, label=f"{name} val")
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, ncol=2)
    axis.set_title(title)
    fig.tight_layout()
    return fig
