"""Counter-based sampling noise: Gumbel noise that is a pure function of (seed, position, row,
class), bit-identical with and without XLA (exact integer hashing), so the same seed gives the
same audio on every path and chunked generation equals one-shot generation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def _fmix32(h):
    """MurmurHash3's 32-bit finalizer: a bijective avalanche mix of uint32 tensors."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    h = h * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
    h = h * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def _class_keys(q_levels: int) -> np.ndarray:
    """uint32 [Q]: a hashed key per class (NumPy, the same mix as `_fmix32`)."""
    with np.errstate(over="ignore"):
        h = np.arange(q_levels, dtype=np.uint32) * np.uint32(0x85EBCA77) + np.uint32(0x165667B1)
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return h


def seed_key(seed):
    """int64 scalar seed -> uint32 [2] key."""
    words = tf.bitcast(tf.cast(seed, tf.int64), tf.uint32)  # [lo, hi]
    k0 = _fmix32(words[0] ^ tf.constant(0x3C6EF372, tf.uint32))
    k1 = _fmix32(words[1] ^ k0 ^ tf.constant(0xA54FF53A, tf.uint32))
    return tf.stack([k0, k1])


def gumbel_noise(key, positions, batch_size, q_levels: int):
    """Standard Gumbel noise, a pure function of (key, position, row, class).

    Args:
      key: uint32 [2], from `seed_key`.
      positions: int64 [P], absolute stream positions.
      batch_size: int32 scalar, rows.
      q_levels: Q.

    Returns:
      float32 [batch_size, P, Q].
    """
    pw = tf.bitcast(tf.cast(positions, tf.int64), tf.uint32)               # [P, 2]
    hp = _fmix32(_fmix32(pw[:, 0] + key[0]) ^ (pw[:, 1] + key[1]))         # [P]
    rows = tf.cast(tf.range(batch_size, dtype=tf.int32), tf.uint32) * tf.constant(0x9E3779B9, tf.uint32)
    hr = _fmix32(hp[None, :] ^ (rows[:, None] + tf.constant(0x7F4A7C15, tf.uint32)))  # [b, P]
    classes = tf.constant(_class_keys(q_levels))                            # [Q]
    h = _fmix32(hr[:, :, None] ^ classes[None, None, :])                    # [b, P, Q]
    u = (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1)
    return -tf.math.log(-tf.math.log(u))
