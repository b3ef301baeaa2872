"""NLL in bits per sample over every sample of a corpus, with state carried within files.

Evaluation uses the model's stateless `forward` with explicit state tensors, so it never
touches the training RNN state, and runs with dropout off.
"""

from __future__ import annotations

import math
import time

import tensorflow as tf
from absl import logging

from pipelines import dataset as dataset_lib
from samplernn_tf import losses


class Evaluator:
    """Computes NLL of whole files with a SampleRNN model, any batch size."""

    def __init__(self, model):
        self.model = model
        # reduce_retracing: one trace serves every row count (eval batches vary by split size).
        self.step = tf.function(self._eval_step, reduce_retracing=True)

    def _eval_step(self, batch, states):
        """One window of every row.

        Args:
          batch: a batch from `pipelines.dataset.eval_dataset` ([R, L] targets and weights).
          states: the model's state structure for R rows.

        Returns:
          (nll_nats per row float32 [R], weights per row float32 [R], new states).
        """
        states = self.model.apply_reset(states, batch["reset"])
        logits, states = self.model.forward(batch, states, training=False)
        nll, count = losses.nll_nats(logits, batch["targets"], batch["weights"])
        return nll, count, states

    def evaluate(self, corpus: dataset_lib.Corpus, config, batch_size: int = 32) -> dict:
        """Evaluates every sample of every item of `corpus` exactly once.

        Returns:
          {'nll_bits_per_sample': float, 'num_samples': int, 'num_files': int, 'seconds': float}.
        """
        ds, steps = dataset_lib.eval_dataset(corpus, config, batch_size)
        rows = max(1, min(batch_size, len(corpus)))
        states = self.model.initial_states(rows)
        total_nll = tf.zeros([rows])
        total_w = tf.zeros([rows])
        start = time.time()
        for batch in ds:
            nll, w, states = self.step(batch, states)
            total_nll += nll
            total_w += w
        n = float(tf.reduce_sum(total_w))
        bits = float(tf.reduce_sum(total_nll)) / max(n, 1.0) / math.log(2.0)
        logging.info("evaluated %d files, %d samples (%d windows of %d rows) in %.1fs",
                     len(corpus), n, steps, rows, time.time() - start)
        return {"nll_bits_per_sample": bits, "num_samples": int(n), "num_files": len(corpus),
                "seconds": n / corpus.sample_rate}
