"""Figures for MLflow (``mlflow.log_figure(figure, "activations.png")``).

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot: no
GUI backend is needed on executors, and no global pyplot state leaks between runs or threads.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def activation_curves_figure(names: Sequence[str] | None = None,
                             params: Mapping[str, dict] | None = None,
                             x_range: tuple[float, float] = (-4.0, 4.0), points: int = 401,
                             columns: int = 4):
    """One panel per activation: the function (solid) and its derivative (dashed).

    ``names`` defaults to every activation in ``fundamentals.activations.ACTIVATIONS``;
    ``params`` maps a name to its parameters, e.g. ``{"leaky_relu": {"alpha": 0.1}}``.
    Returns the Figure (the caller logs or saves it).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from nnfund_spark.fundamentals.activations import ACTIVATIONS, reference

    names = list(ACTIVATIONS if names is None else names)
    params = dict(params or {})
    if not names:
        raise ValueError("activation_curves_figure needs at least one activation name")
    unused = sorted(set(params) - set(names))
    if unused:
        raise ValueError(f"params given for {', '.join(unused)}, which are not plotted; "
                         f"plotted: {', '.join(names)}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    # Validate every name before drawing anything, so a typo fails fast with the full list.
    curves = [(name, *reference(name, **params.get(name, {}))) for name in names]

    columns = min(columns, len(names))
    rows = -(-len(names) // columns)
    figure = Figure(figsize=(3.2 * columns, 2.6 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    x = np.linspace(x_range[0], x_range[1], points)
    for index, (name, function, derivative) in enumerate(curves):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.axhline(0.0, color="0.8", linewidth=0.8)
        axes.axvline(0.0, color="0.8", linewidth=0.8)
        axes.plot(x, function(x), label="f(x)", linewidth=1.8)
        axes.plot(x, derivative(x), label="f'(x)", linestyle="--", linewidth=1.4)
        suffix = ", ".join(f"{key}={value}" for key, value in params.get(name, {}).items())
        axes.set_title(f"{name}({suffix})" if suffix else name, fontsize=10)
        axes.tick_params(labelsize=8)
        if index == 0:
            axes.legend(fontsize=8, loc="upper left")
    return figure
