"""Pure TBPTT window arithmetic, exactly as the seed document describes (0-based).

Names: L = seq_len, B = top frame size, F = bottom frame size, f = any tier's frame size.
A stream `x` of codes is cut into windows `w_k = x[k*L : k*L + L + B]` (`tf.signal.frame`),
consecutive windows overlapping by B samples of context. In each window:

  * the tier of frame size f reads `w[B - f : B - f + L]` in L/f frames of f samples;
  * the sample-level MLP reads, for target position i, the F previous samples
    `w[B - F + i : B + i]`;
  * the targets are `w[B : B + L]`.

So every target is predicted from strictly earlier samples only. A file of T samples is
front-padded with B samples of silence (so that its very first sample is a target, as in the
Theano reference) and back-padded to a whole number of windows; `pad_for_windows` returns the
per-target weights that mask the back padding out of the loss.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def validate_frame_sizes(seq_len: int, frame_sizes: Sequence[int]) -> None:
    """Raises ValueError unless each frame size divides the one above and seq_len % top == 0."""
    fs = [int(f) for f in frame_sizes]
    if not fs or any(f < 1 for f in fs):
        raise ValueError(f"frame_sizes must be a non-empty list of positive ints, got {fs}")
    for upper, lower in zip(fs, fs[1:]):
        if upper % lower or upper <= lower:
            raise ValueError(f"frame_sizes: each size must be a multiple of the one below it, got {fs}")
    if seq_len < 1 or seq_len % fs[0]:
        raise ValueError(f"seq_len {seq_len} must be a positive multiple of the top frame size {fs[0]}")


def num_windows(num_samples, seq_len: int):
    """Windows needed to cover `num_samples` targets: ceil(T / L), at least 1. Int or int tensor."""
    if isinstance(num_samples, int):
        return max(1, -(-num_samples // seq_len))
    return tf.maximum(1, (num_samples + seq_len - 1) // seq_len)


def pad_for_windows(codes, seq_len: int, top_frame_size: int, pad_code: int):
    """Pads one file's codes so that every sample is a target of exactly one window.

    Args:
      codes: int32 [T], T >= 0.
      seq_len: L.
      top_frame_size: B.
      pad_code: the code of silence.

    Returns:
      padded: int32 [B + N*L], N = num_windows(T, L): B pad codes, the T codes, then pad codes.
      weights: float32 [N*L], 1.0 where the target is a real sample, 0.0 on padding.
    """
    codes = tf.convert_to_tensor(codes, tf.int32)
    t = tf.shape(codes)[0]
    total = num_windows(t, seq_len) * seq_len
    padded = tf.concat([tf.fill([top_frame_size], pad_code), codes,
                        tf.fill([total - t], pad_code)], axis=0)
    weights = tf.cast(tf.range(total) < t, tf.float32)
    return padded, weights


def tbptt_windows(samples, seq_len: int, frame_sizes: Sequence[int]):
    """Cuts code streams into TBPTT windows and every tier's inputs.

    Args:
      samples: int32 codes, [T] or [batch, T], T >= L + B. Windows that would run past the end
        are not emitted (use `pad_for_windows` first to cover every sample).
      seq_len: L, a multiple of frame_sizes[0].
      frame_sizes: frame size of each frame tier, top tier first; each divides the one above.

    Returns:
      A dict, with `...` the optional batch dimension and N = 1 + (T - L - B) // L:
        'tier_inputs': list over tiers (top first) of int32 [..., N, L/f, f];
        'sample_inputs': int32 [..., N, L, F], the F samples before each target;
        'targets': int32 [..., N, L].
    """
    validate_frame_sizes(seq_len, frame_sizes)
    samples = tf.convert_to_tensor(samples, tf.int32)
    big = int(frame_sizes[0])
    small = int(frame_sizes[-1])
    windows = tf.signal.frame(samples, seq_len + big, seq_len, axis=-1)  # [..., N, L + B]
    lead = tf.shape(windows)[:-1]
    tier_inputs = []
    for f in frame_sizes:
        f = int(f)
        span = windows[..., big - f: big - f + seq_len]
        tier_inputs.append(tf.reshape(span, tf.concat([lead, [seq_len // f, f]], axis=0)))
    # Step-1 frames over w[B-F : B+L-1]: row i is w[B-F+i : B+i].
    sample_inputs = tf.signal.frame(windows[..., big - small: big + seq_len - 1], small, 1, axis=-1)
    targets = windows[..., big: big + seq_len]
    return {"tier_inputs": tier_inputs, "sample_inputs": sample_inputs, "targets": targets}
