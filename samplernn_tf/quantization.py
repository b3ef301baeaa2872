"""Amplitude quantization: pure encode/decode functions with exact inverses.

Codes are int32 in [0, Q). Audio is float32 in [-1, 1]. Every scheme is a companding curve
`y = c(x)` in [-1, 1] followed by the same uniform grid `q = round((y + 1) / 2 * (Q - 1))`, so
`encode(decode(q)) == q` for every code and `|decode(encode(x)) - x|` is at most half a step of
the companded grid. All functions work on tensors of any shape.
"""

from __future__ import annotations

import math

import tensorflow as tf

A_LAW_A = 87.6


def _mu(q_levels: int) -> float:
    return float(q_levels - 1)


def compress(x, q_type: str, q_levels: int):
    """Companding curve: float [-1, 1] -> float [-1, 1], same shape."""
    x = tf.clip_by_value(tf.convert_to_tensor(x, tf.float32), -1.0, 1.0)
    if q_type == "linear":
        return x
    if q_type == "mu-law":
        mu = _mu(q_levels)
        return tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / math.log1p(mu)
    if q_type == "a-law":
        a = A_LAW_A
        ax = tf.abs(x)
        small = a * ax / (1.0 + math.log(a))
        large = (1.0 + tf.math.log(tf.maximum(a * ax, 1.0))) / (1.0 + math.log(a))
        return tf.sign(x) * tf.where(ax < 1.0 / a, small, large)
    raise ValueError(f"unknown q_type {q_type!r}")


def expand(y, q_type: str, q_levels: int):
    """Inverse of `compress`: float [-1, 1] -> float [-1, 1], same shape."""
    y = tf.clip_by_value(tf.convert_to_tensor(y, tf.float32), -1.0, 1.0)
    if q_type == "linear":
        return y
    if q_type == "mu-law":
        mu = _mu(q_levels)
        return tf.sign(y) * tf.math.expm1(tf.abs(y) * math.log1p(mu)) / mu
    if q_type == "a-law":
        a = A_LAW_A
        ay = tf.abs(y) * (1.0 + math.log(a))
        small = ay / a
        large = tf.exp(ay - 1.0) / a
        return tf.sign(y) * tf.where(ay < 1.0, small, large)
    raise ValueError(f"unknown q_type {q_type!r}")


def encode(x, q_type: str, q_levels: int):
    """Quantizes audio.

    Args:
      x: float audio in [-1, 1] (clipped), any shape.
      q_type: 'linear', 'mu-law' or 'a-law'.
      q_levels: Q >= 2.

    Returns:
      int32 codes in [0, Q), same shape as `x`.
    """
    y = compress(x, q_type, q_levels)
    q = tf.round((y + 1.0) * (0.5 * (q_levels - 1)))
    return tf.cast(tf.clip_by_value(q, 0.0, q_levels - 1.0), tf.int32)


def decode(q, q_type: str, q_levels: int):
    """Exact inverse of `encode` on codes: int codes [0, Q), any shape -> float32 in [-1, 1]."""
    y = tf.cast(q, tf.float32) * (2.0 / (q_levels - 1)) - 1.0
    # The curves can overshoot +-1 by an ulp; audio must stay in range.
    return tf.clip_by_value(expand(y, q_type, q_levels), -1.0, 1.0)


def zero_code(q_type: str, q_levels: int) -> int:
    """The code of silence (amplitude 0.0), used to pad. A Python int."""
    # All curves map 0 to 0, so this is the uniform grid's middle, rounded half to even as tf.round.
    return int(round((q_levels - 1) / 2.0))


def frame_tier_input(q, q_levels: int):
    """What the frame tiers read: codes rescaled to [-2, 2] as `q * 4 / (Q - 1) - 2`.

    Args:
      q: int codes [0, Q), any shape.
    Returns:
      float32 of the same shape.
    """
    return tf.cast(q, tf.float32) * (4.0 / (q_levels - 1)) - 2.0
