"""Learning-rate schedules as pure functions of the global step (no TensorFlow needed).

``learning_rate_at(step, schedule, base_lr, steps_per_epoch, total_epochs, **params)`` with
``base_lr`` the peak rate (already scaled for the workers, see ``scaled_base_lr``):

- ``constant``: base_lr.
- ``step``: base_lr · drop_factor ^ floor(epoch / drop_every_epochs), epoch counted from the
  start of training, so drops land on the same epochs with or without warm-up (defaults 0.1
  every 30 epochs, the ResNet ImageNet recipe; Goyal et al. keep those epochs after warm-up).
- ``exponential``: base_lr · decay_rate ^ epochs since the end of warm-up, continuously
  (default 0.95 per epoch), so it starts exactly at the peak.
- ``cosine``: base_lr · (f + (1 − f) · ½ (1 + cos(π · progress))) with f = final_lr_fraction
  (default 0.05), progress going 0 → 1 from the end of warm-up to the last step; f = 1 disables
  decay.

Every schedule takes ``warmup_epochs`` (default 0): the rate rises linearly from base_lr/10 to
base_lr over that many epochs first (Goyal et al. 2017; starting at a tenth rather than at zero
means the first steps already learn), and the decay starts from there. Unknown parameters raise
ValueError listing the accepted ones.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

SCHEDULE_PARAMETERS = {
    "constant": {},
    "step": {"drop_every_epochs": 30.0, "drop_factor": 0.1},
    "exponential": {"decay_rate": 0.95},
    "cosine": {"final_lr_fraction": 0.05},
}
SCHEDULES = tuple(SCHEDULE_PARAMETERS)
# Where warm-up starts, as a fraction of the peak.
WARMUP_START_FRACTION = 0.1


def _positive(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a number {'>=' if allow_zero else '>'} 0, "
                         f"got {value!r}")
    return float(value)


def schedule_parameters(schedule: str) -> dict:
    """The parameters ``schedule`` accepts (besides warmup_epochs), with their defaults."""
    if schedule not in SCHEDULE_PARAMETERS:
        raise ValueError(f"unknown schedule '{schedule}'; available: {', '.join(SCHEDULES)}")
    return dict(SCHEDULE_PARAMETERS[schedule])


def checked_schedule(schedule: str, params: dict) -> dict:
    """The schedule's settings (defaults + params), every value checked up front so a bad one
    fails at the first call, not when training reaches the step that uses it."""
    accepted = schedule_parameters(schedule)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"schedule '{schedule}' does not accept {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(accepted) + ['warmup_epochs'])}")
    settings = {**accepted, **params}
    for key in ("drop_every_epochs", "drop_factor", "decay_rate"):
        if key in settings:
            settings[key] = _positive(key, settings[key])
    final = settings.get("final_lr_fraction", 0.0)
    if isinstance(final, bool) or not isinstance(final, (int, float)) or not 0 <= final <= 1:
        raise ValueError(f"final_lr_fraction must be a number in [0, 1], got {final!r}")
    return settings


def learning_rate_at(step: int, schedule: str, base_lr: float, steps_per_epoch: int,
                     total_epochs: float, warmup_epochs: float = 0.0, **params) -> float:
    """The learning rate for global step ``step`` (0-based, counted over all epochs)."""
    settings = checked_schedule(schedule, params)
    _positive("step", step, allow_zero=True)
    base_lr = _positive("base_lr", base_lr)
    steps_per_epoch = _positive("steps_per_epoch", steps_per_epoch)
    total_steps = _positive("total_epochs", total_epochs) * steps_per_epoch
    # Rounded to whole steps, as the worker's callback always did, so warm-up ends on a step.
    warmup_steps = int(round(_positive("warmup_epochs", warmup_epochs, True) * steps_per_epoch))

    if warmup_steps and step < warmup_steps:
        return base_lr * (WARMUP_START_FRACTION + (1 - WARMUP_START_FRACTION) * step / warmup_steps)
    decay_step = step - warmup_steps
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        # The tiny epsilon keeps a boundary step (epoch 30.0 computed as 29.999...) on the
        # dropped side.
        drops = math.floor(step / steps_per_epoch / settings["drop_every_epochs"] + 1e-9)
        return base_lr * settings["drop_factor"] ** drops
    if schedule == "exponential":
        return base_lr * settings["decay_rate"] ** (decay_step / steps_per_epoch)
    final = settings["final_lr_fraction"]
    if final >= 1.0 or total_steps <= warmup_steps:
        return base_lr
    progress = min(1.0, decay_step / max(1.0, total_steps - warmup_steps))
    return base_lr * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def schedule_function(schedule: str, base_lr: float, steps_per_epoch: int, total_epochs: float,
                      warmup_epochs: float = 0.0, **params) -> Callable[[int], float]:
    """``step -> learning rate`` with everything validated now (call it on the driver or when a
    rank starts, so a bad setting fails before any training)."""
    learning_rate_at(0, schedule, base_lr, steps_per_epoch, total_epochs, warmup_epochs, **params)
    return functools.partial(_at_step, schedule=schedule, base_lr=base_lr,
                             steps_per_epoch=steps_per_epoch, total_epochs=total_epochs,
                             warmup_epochs=warmup_epochs, params=params)


def _at_step(step: int, *, schedule, base_lr, steps_per_epoch, total_epochs, warmup_epochs,
             params) -> float:
    # A module-level function (not a lambda) so the result pickles to Spark executors.
    return learning_rate_at(step, schedule, base_lr, steps_per_epoch, total_epochs,
                            warmup_epochs, **params)


def scaled_base_lr(base_lr: float, world_size: int, scale: bool | str = True) -> float:
    """The peak rate for ``world_size`` Horovod ranks.

    ``scale``: True or ``"linear"`` multiplies by the number of ranks (Goyal et al. 2017: the
    global batch grows with the ranks, so keep lr / batch constant); ``"sqrt"`` by its square
    root (gentler, often used with Adam-type optimizers); False or ``"none"`` leaves it.
    """
    base_lr = _positive("base_lr", base_lr)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be an integer >= 1, got {world_size!r}")
    rules = {True: "linear", False: "none", "linear": "linear", "sqrt": "sqrt", "none": "none"}
    if not isinstance(scale, (bool, str)) or scale not in rules:
        raise ValueError(f"unknown learning-rate scaling {scale!r}; available: true, false, "
                         f"linear, sqrt, none")
    rule = rules[scale]
    if rule == "linear":
        return base_lr * world_size
    if rule == "sqrt":
        return base_lr * math.sqrt(world_size)
    return base_lr
