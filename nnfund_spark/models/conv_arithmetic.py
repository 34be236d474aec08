"""Convolution arithmetic from the course (CS231n notation), as plain integer functions.

- output size along one axis: (N − F + 2P) / S + 1 for input size N, filter F, padding P and
  stride S; a stride that does not tile the padded input exactly means the filter "does not fit"
  (frameworks silently drop the leftover border instead; these functions refuse, so a lecture
  example with an impossible geometry is caught);
- parameters of a conv layer: (F·F·D + 1)·K for K filters of F×F over depth D (+1 per filter
  for its bias), e.g. 5 filters of 5×5 on an RGB image: (5·5·3 + 1)·5 = 380;
- "same" padding: P = (F − 1) / 2 keeps N at stride 1 for odd F.
"""
from __future__ import annotations


def _check_integer(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def conv_output_size(n: int, f: int, p: int = 0, s: int = 1) -> int:
    """(N − F + 2P)/S + 1; ValueError saying the filter 'does not fit' unless that is a positive
    whole number."""
    _check_integer("input size N", n, 1)
    _check_integer("filter size F", f, 1)
    _check_integer("padding P", p, 0)
    _check_integer("stride S", s, 1)
    span = n - f + 2 * p
    if span < 0:
        raise ValueError(f"filter F={f} does not fit: it is larger than the padded input "
                         f"N + 2P = {n + 2 * p}")
    if span % s:
        raise ValueError(f"filter F={f} with stride S={s} does not fit an input of N={n} with "
                         f"padding P={p}: (N - F + 2P)/S + 1 = ({span})/{s} + 1 = "
                         f"{span / s + 1:.4g} is not an integer")
    return span // s + 1


def conv_params(f: int, depth: int, k: int, bias: bool = True) -> int:
    """(F·F·D + 1)·K weights and biases of K filters of size F×F×D."""
    _check_integer("filter size F", f, 1)
    _check_integer("input depth D", depth, 1)
    _check_integer("filter count K", k, 1)
    return (f * f * depth + int(bias)) * k


def same_padding(f: int) -> int:
    """The padding P that keeps the size at stride 1: (F − 1)/2, which needs an odd F."""
    _check_integer("filter size F", f, 1)
    if f % 2 == 0:
        raise ValueError(f"filter size F={f} is even: no symmetric padding keeps the size "
                         f"(use an odd F such as 1, 3, 5, 7)")
    return (f - 1) // 2


def pool_output_size(n: int, f: int, s: int | None = None) -> int:
    """Pooling uses the same arithmetic without padding; the stride defaults to the window."""
    return conv_output_size(n, f, 0, f if s is None else s)
