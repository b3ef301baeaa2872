"""Negative log-likelihood of quantized samples, in nats, and conversions to bits.

Training and evaluation report bits per sample, the unit of the SampleRNN paper.
"""

from __future__ import annotations

import math

import tensorflow as tf

LN2 = math.log(2.0)


def sparse_softmax_nll(logits, labels):
    """-log softmax(logits)[label], float32, with a hand-written gradient.

    Same value as `tf.nn.sparse_softmax_cross_entropy_with_logits`, which on CPU is ~5x slower
    than these few elementwise ops for [16384, 256] logits.

    Args:
      logits: float32 [N, Q].
      labels: int32 [N].

    Returns:
      float32 [N].
    """
    q = tf.shape(logits)[-1]
    flat_idx = tf.range(tf.shape(labels)[0]) * q + labels

    @tf.custom_gradient
    def run(logits):
        m = tf.reduce_max(logits, axis=-1, keepdims=True)
        e = tf.exp(logits - m)
        s = tf.reduce_sum(e, axis=-1, keepdims=True)
        picked = tf.gather(tf.reshape(logits, [-1]), flat_idx)
        nll = tf.squeeze(tf.math.log(s) + m, -1) - picked

        def grad(dy):
            # d nll / d logits = softmax - onehot(label), scaled by the upstream gradient.
            g = e * (dy[:, None] / s)
            return tf.tensor_scatter_nd_sub(g, tf.stack([tf.range(tf.shape(labels)[0]), labels], 1), dy)
        return nll, grad

    return run(logits)


def nll_nats(logits, targets, weights=None):
    """Per-row weighted NLL of the targets, softmax cross-entropy computed in float32.

    Args:
      logits: [B, L, Q] (any float dtype; cast to float32 before the softmax).
      targets: int [B, L] codes in [0, Q).
      weights: float32 [B, L], 1 for real targets and 0 for padding; None = all ones.

    Returns:
      (sum_nats float32 [B], count float32 [B]): summed NLL and summed weights per row, so
      that callers can reduce across rows, windows and replicas before dividing.
    """
    logits = tf.cast(logits, tf.float32)
    q = logits.shape[-1]
    targets = tf.cast(targets, tf.int32)
    nll = tf.reshape(sparse_softmax_nll(tf.reshape(logits, [-1, q]), tf.reshape(targets, [-1])),
                     tf.shape(targets))
    if weights is None:
        weights = tf.ones_like(nll)
    weights = tf.cast(weights, tf.float32)
    return tf.reduce_sum(nll * weights, axis=-1), tf.reduce_sum(weights, axis=-1)


def mean_nll_nats(logits, targets, weights=None):
    """Weighted mean NLL over all targets, float32 scalar (0 when every weight is 0)."""
    total, count = nll_nats(logits, targets, weights)
    return tf.math.divide_no_nan(tf.reduce_sum(total), tf.reduce_sum(count))


def nats_to_bits(x):
    """x / ln 2."""
    return x / LN2


def bits_to_nats(x):
    """x * ln 2."""
    return x * LN2
