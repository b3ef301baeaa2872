"""Autoregressive generation, priming and scoring: the user-facing `Generator`.

`Generator` (generate / stream / generate_with_logits / score) checks its arguments in
Python and runs one `tf.function` per call. The graph it runs (noise, the frame loop,
priming, scoring) and the design notes are in `samplernn_tf.generation_core`; its public
names are re-exported here, so `samplernn_tf.generation.GenerationCore` etc. still work.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf

from samplernn_tf import quantization
from samplernn_tf.config import Config
from samplernn_tf.generation_core import (  # re-exported: the public names of this module before the split
    AUTO_JIT_MAX_BATCH, AUTO_JIT_MAX_DIM, DEFAULT_FRAMES_PER_CALL, GenerationCore)
from samplernn_tf.sampling import gumbel_noise, seed_key  # noqa: F401 (re-exported)

# Beyond this many samples per top frame the unrolled body gets large (graph size and XLA
# compile time grow linearly); still correct, only slower to build.
MAX_UNROLL = 512


# ------------------------------------------------------------------------ in-process API --

class Generator:
    """Generates audio with a trained model. Thread-safe: calls share no state.

    Args:
      model: a `SampleRNN` holding the trained weights (any batch_size).
      config: the run's Config.
      jit: XLA-compile the loop body (True / False); None = auto: XLA at dim <= 512, and above
        it for batches of <= 8 rows, the plain TF loop for more (see bench/generate_speed.py).
      frames_per_call: top frames per XLA launch (with jit). The audio does not depend on it.
    """

    def __init__(self, model, config: Config, jit: bool | None = None,
                 frames_per_call: int = DEFAULT_FRAMES_PER_CALL):
        self.config = config
        self.core = GenerationCore(model, config, jit=jit, frames_per_call=frames_per_call)
        if config.model.top_frame_size > MAX_UNROLL:
            from absl import logging
            logging.warning("top frame size %d: the unrolled loop body is large (slow to build)",
                            config.model.top_frame_size)
        state_spec = tf.nest.map_structure(lambda s: tf.TensorSpec([None, s.shape[-1]], s.dtype),
                                           model.initial_states(1))
        B = config.model.top_frame_size
        i32, f32 = tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.float32)
        self._generate = tf.function(self.core.generate, reduce_retracing=True)
        self._start = tf.function(self.core.start, input_signature=[i32])
        self._prime = tf.function(self.core.prime, input_signature=[
            tf.TensorSpec([None, None], tf.float32), i32])
        self._run = tf.function(
            self.core.continue_frames, input_signature=[state_spec, tf.TensorSpec([None, B], tf.int32),
                             tf.TensorSpec([], tf.int64), i32, f32, tf.TensorSpec([], tf.int64),
                             tf.TensorSpec([None, B], tf.int32), tf.TensorSpec([B], tf.bool)])

    # -- argument checks (Python, before any graph runs) -------------------------------------

    def _check(self, num_samples, batch_size, temperature):
        if int(num_samples) != num_samples or num_samples <= 0:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
        if int(batch_size) != batch_size or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        t = np.asarray(temperature, np.float32)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != batch_size):
            raise ValueError(f"temperature must be a scalar or [batch_size={batch_size}], "
                             f"got shape {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(t <= 0):
            raise ValueError(f"temperature must be > 0 (and finite), got {temperature}")
        return np.broadcast_to(t, [batch_size]).astype(np.float32)

    def check_prime(self, prime, batch_size: int, prime_sample_rate: int | None = None):
        """Validates a prime clip and returns it as float32 [rows, T] (rows = 1 or batch_size).

        Raises:
          ValueError: wrong rank or row count, shorter than one top frame, non-finite values,
            or at another sample rate than the model's.
        """
        rate = self.config.data.sample_rate
        if prime_sample_rate is not None and int(prime_sample_rate) != rate:
            raise ValueError(f"prime is at {prime_sample_rate} Hz but the model runs at {rate} Hz; "
                             f"resample it first (pipelines.audio.resample)")
        x = np.asarray(prime, np.float32)
        if x.ndim == 1:
            x = x[None]
        if x.ndim != 2:
            raise ValueError(f"prime must be float audio [time] or [batch, time], got shape {x.shape}")
        if x.shape[0] not in (1, batch_size):
            raise ValueError(f"prime has {x.shape[0]} rows; expected 1 or batch_size={batch_size}")
        B = self.config.model.top_frame_size
        if x.shape[1] < B:
            raise ValueError(f"prime has {x.shape[1]} samples; it needs at least one top frame "
                             f"({B} samples at {rate} Hz)")
        if not np.all(np.isfinite(x)):
            raise ValueError("prime has non-finite values (NaN or Inf)")
        return x

    # -- public API --------------------------------------------------------------------------

    def generate(self, num_samples: int, batch_size: int = 1, temperature=1.0, seed: int = 0,
                 prime=None, prime_sample_rate: int | None = None):
        """Generates `batch_size` sequences of `num_samples` samples.

        Args:
          num_samples: length N in samples (> 0).
          batch_size: rows b (> 0).
          temperature: > 0, a scalar or one per row [b]. Near 0 = greedy.
          seed: integer; the same seed (and arguments) gives the same audio.
          prime: optional float audio [T] or [1 or b, T] at the model's sample rate, T >= one
            top frame. It is normalized and quantized like training data, the whole clip warms
            the state up, and generation continues from its end.
          prime_sample_rate: if given, must equal the model's rate.

        Returns:
          (audio float32 [b, N] in [-1, 1], codes int32 [b, N]), NumPy arrays.

        Raises:
          ValueError: for any invalid argument.
        """
        temps = self._check(num_samples, batch_size, temperature)
        kw = {}
        if prime is not None:
            kw["prime"] = tf.constant(self.check_prime(prime, batch_size, prime_sample_rate))
        out = self._generate(tf.constant(num_samples, tf.int32), tf.constant(batch_size, tf.int32),
                             tf.constant(temps), tf.constant(seed, tf.int64), **kw)
        return out["audio"].numpy(), out["codes"].numpy()

    def generate_with_logits(self, num_samples: int, batch_size: int = 1, temperature=1.0,
                             seed: int = 0, prime=None):
        """As `generate`, plus the logits each sample was drawn from, float32 [b, N, Q]."""
        temps = self._check(num_samples, batch_size, temperature)
        kw = {}
        if prime is not None:
            kw["prime"] = tf.constant(self.check_prime(prime, batch_size))
        out = self._generate(tf.constant(num_samples, tf.int32), tf.constant(batch_size, tf.int32),
                             tf.constant(temps), tf.constant(seed, tf.int64), want_logits=True, **kw)
        return out["audio"].numpy(), out["codes"].numpy(), out["logits"].numpy()

    def stream(self, num_samples: int, batch_size: int = 1, temperature=1.0, seed: int = 0,
               prime=None, prime_sample_rate: int | None = None,
               chunk_samples: int = 16000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`generate` in chunks of about `chunk_samples`, carrying the state between chunks.

        Yields (audio [b, n], codes [b, n]) chunks whose concatenation equals `generate(...)`
        with the same arguments exactly (the noise is keyed by stream position).
        """
        temps = tf.constant(self._check(num_samples, batch_size, temperature))
        B = self.config.model.top_frame_size
        b = tf.constant(batch_size, tf.int32)
        if prime is None:
            states, last, forced, mask, k = self._start(b)
        else:
            states, last, forced, mask, k = self._prime(
                tf.constant(self.check_prime(prime, batch_size, prime_sample_rate)), b)
        k = int(k)
        chunk_frames = max(1, int(round(chunk_samples / B)))
        total_frames = -(-(k + num_samples) // B)
        done, pos, skip, left = 0, 0, k, num_samples
        seed_t = tf.constant(seed, tf.int64)
        d = self.config.data
        while done < total_frames:
            n = min(chunk_frames, total_frames - done)
            codes, states, last = self._run(states, last, tf.constant(pos, tf.int64),
                                            tf.constant(n, tf.int32), temps, seed_t, forced, mask)
            mask = tf.zeros([B], tf.bool)
            codes = codes.numpy()[:, skip:]
            codes = codes[:, :left]
            skip, left = 0, left - codes.shape[1]
            done, pos = done + n, pos + n * B
            audio = quantization.decode(codes, d.q_type, self.config.model.q_levels).numpy()
            yield audio, codes

    def score(self, audio) -> np.ndarray:
        """NLL bits per sample of each row of float32 [b, T] audio (one file per row)."""
        x = np.asarray(audio, np.float32)
        if x.ndim != 2 or x.shape[1] < 1:
            raise ValueError(f"audio must be float [batch, time] with time >= 1, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("audio has non-finite values (NaN or Inf)")
        if not hasattr(self, "_score"):
            self._score = tf.function(self.core.score, input_signature=[
                tf.TensorSpec([None, None], tf.float32)])
        return self._score(tf.constant(x)).numpy()
