"""Trainer core: model + optimizer + step counter, one compiled `train_step`. (Evaluation,
stateless and for any batch size, is `samplernn_tf.evaluation.Evaluator`.)

The loop around it (data, checkpoint manager, summaries, validation) lives in `training.py`.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from samplernn_tf import losses
from samplernn_tf.config import Config, ConfigError, TrainConfig
from samplernn_tf.model import SampleRNN

_COMPUTE_DTYPES = {"float32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to the peak rate, then 'constant', 'cosine' or 'exponential' decay.

    With W = warmup_steps and s the optimizer step (0-based):
      warm-up factor min(1, (s + 1) / W) (1 when W = 0), times
      constant:    lr
      cosine:      lr * (1 + cos(pi * min(1, (s - W) / (max_steps - W)))) / 2, 0 at max_steps
      exponential: lr * decay_rate ** (max(0, s - W) / decay_steps)
    """

    def __init__(self, learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                 max_steps: int = 100000, decay_rate: float = 0.5, decay_steps: int = 100000):
        self.learning_rate, self.schedule = float(learning_rate), schedule
        self.warmup_steps, self.max_steps = int(warmup_steps), int(max_steps)
        self.decay_rate, self.decay_steps = float(decay_rate), int(decay_steps)

    @classmethod
    def from_config_section(cls, tc: TrainConfig) -> "LearningRate":
        return cls(tc.learning_rate, tc.lr_schedule, tc.warmup_steps, tc.max_steps,
                   tc.lr_decay_rate, tc.lr_decay_steps)

    def __call__(self, step):
        s = tf.cast(step, tf.float32)
        w = float(self.warmup_steps)
        factor = tf.minimum(1.0, (s + 1.0) / w) if w > 0 else tf.constant(1.0)
        after = tf.maximum(0.0, s - w)
        if self.schedule == "cosine":
            span = float(max(1, self.max_steps - self.warmup_steps))
            factor *= 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(1.0, after / span)))
        elif self.schedule == "exponential":
            factor *= tf.pow(self.decay_rate, after / float(self.decay_steps))
        elif self.schedule != "constant":
            raise ValueError(f"unknown lr schedule {self.schedule!r}")
        return self.learning_rate * factor

    def get_config(self):
        return {"learning_rate": self.learning_rate, "schedule": self.schedule,
                "warmup_steps": self.warmup_steps, "max_steps": self.max_steps,
                "decay_rate": self.decay_rate, "decay_steps": self.decay_steps}


def batch_spec(config: Config, batch_size: int | None):
    """The training batch's TensorSpec dict (see the data contract in `pipelines.dataset`)."""
    fs, seq_len = config.model.frame_sizes, config.data.seq_len
    return {
        "tier_inputs": tuple(tf.TensorSpec([batch_size, seq_len // f, f], tf.int32) for f in fs),
        "sample_inputs": tf.TensorSpec([batch_size, seq_len, fs[-1]], tf.int32),
        "targets": tf.TensorSpec([batch_size, seq_len], tf.int32),
        "weights": tf.TensorSpec([batch_size, seq_len], tf.float32),
        "reset": tf.TensorSpec([batch_size], tf.bool),
    }


class Trainer:
    """Owns the stateful model, the optimizer, the step counter and a checkpoint of the three.

    Args:
      config: the run Config.
      strategy: a tf.distribute.Strategy (default: the current/default one). The model is built
        with batch_size / num_replicas rows per replica.
      jit_compile: compile the train step with XLA.

    Attributes:
      model: SampleRNN (stateful, per-replica batch size).
      optimizer: Adam (wrapped in a LossScaleOptimizer for fp16) with a `LearningRate` schedule.
      step: int64 tf.Variable, incremented by every train_step.
      checkpoint: tf.train.Checkpoint(model=, optimizer=, step=) (no RNN state).
      train_step: tf.function(batch) -> {'bits_per_sample', 'grad_norm', 'learning_rate',
        'finite'}. A step whose loss or gradients are not finite changes no variable (weights,
        optimizer slots and iterations, RNN state) except `step`, and returns finite=False.

    Raises:
      ConfigError: batch_size is not divisible by the number of replicas.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy | None = None,
                 jit_compile: bool = False):
        self.config = config
        tc = config.train
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if tc.batch_size % replicas:
            raise ConfigError(f"--batch_size: {tc.batch_size} is not divisible by the "
                              f"{replicas} replicas of the distribution strategy")
        self.per_replica_batch_size = tc.batch_size // replicas
        self.compute_dtype = _COMPUTE_DTYPES[tc.mixed_precision]
        self.fp16 = tc.mixed_precision == "fp16"
        with self.strategy.scope():
            self.model = SampleRNN(config.model, batch_size=self.per_replica_batch_size,
                                   compute_dtype=self.compute_dtype)
            self.learning_rate = LearningRate.from_config_section(tc)
            optimizer = keras.optimizers.Adam(learning_rate=self.learning_rate)
            self._adam = optimizer
            if self.fp16:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            # Keras 3 + tf.distribute: slots must exist, inside the scope, before the first step.
            self.optimizer.build(self.model.trainable_variables)
        # Outside the scope: only updated in cross-replica context, and `int(step)` stays valid.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              step=self.step)
        self._jit_compile = jit_compile
        self.use_input_spec(batch_spec(config, tc.batch_size if replicas == 1 else None))

    def distribute(self, dataset: tf.data.Dataset):
        """For a multi-replica strategy: distributes `dataset` (global batches) and recompiles
        `train_step` for its per-replica element spec. Returns the distributed dataset."""
        dist = self.strategy.experimental_distribute_dataset(dataset)
        self.use_input_spec(dist.element_spec)
        return dist

    def use_input_spec(self, spec):
        """(Re)compiles `train_step` for batches of `spec`: the global batch spec, or the spec of
        per-replica values (`samplernn_tf.distribute.split_batch`)."""
        self.train_step = tf.function(self._train_step, input_signature=[spec],
                                      jit_compile=self._jit_compile)

    # ------------------------------------------------------------------------------ training --

    def _clip(self, grads, norm):
        tc = self.config.train
        if tc.clip_type == "norm":
            return tf.clip_by_global_norm(grads, tc.clip_value, use_norm=norm)[0]
        if tc.clip_type == "value":
            return [tf.clip_by_value(g, -tc.clip_value, tc.clip_value) for g in grads]
        return grads

    def _replica_step(self, batch):
        ctx = tf.distribute.get_replica_context()
        replicas = self.strategy.num_replicas_in_sync
        variables = self.model.trainable_variables
        local_count = tf.reduce_sum(batch["weights"])
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_count) if replicas > 1 else local_count
        scale = tf.cast(self.optimizer.dynamic_scale, tf.float32) if self.fp16 else None
        states_before = self.model.get_states()  # put back if this step is skipped
        with tf.GradientTape() as tape:
            logits = self.model(batch, training=True)
            nll, _ = losses.nll_nats(logits, batch["targets"], batch["weights"])
            local_nll = tf.reduce_sum(nll)
            loss = local_nll / tf.maximum(count, 1.0)
            if scale is not None:
                loss = loss * scale
        grads = tape.gradient(loss, variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        # A non-finite loss can come with finite gradients (e.g. NaN weights on masked targets).
        bad_loss = tf.cast(tf.logical_not(tf.math.is_finite(local_nll)), tf.float32)
        if replicas > 1:
            # Clip the summed gradient, not each replica's part of it (one batched all-reduce).
            grads, bad_loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, (grads, bad_loss))
        if scale is not None:
            grads = [g / scale for g in grads]
        norm = tf.linalg.global_norm(grads)
        # The same on every replica: norm and bad_loss are all-reduced.
        finite = tf.logical_and(tf.math.is_finite(norm), tf.equal(bad_loss, 0.0))
        lr = tf.convert_to_tensor(self._adam.learning_rate, tf.float32)
        grads = self._clip(grads, norm)
        if scale is not None:
            # Hand the LossScaleOptimizer scaled gradients again (exact: scale is a power of two);
            # any non-finite raw gradient must stay non-finite so that it skips the step.
            grads = [g * tf.where(finite, scale, math.nan) for g in grads]
        if replicas > 1:
            # Keras's optimizer sums gradients across replicas again; hand it one share each.
            grads = [g / replicas for g in grads]
        self._apply_if_finite(finite, grads, variables)
        # The forward pass already moved the RNN state; a skipped step leaves it as it was.
        flat_states = tf.nest.flatten(self.model.state_variables)
        def keep_states():
            for v, old in zip(flat_states, tf.nest.flatten(states_before)):
                v.assign(old)

        tf.cond(finite, lambda: None, keep_states)
        return local_nll, local_count, norm, lr, finite

    def _apply_if_finite(self, finite, grads, variables):
        """optimizer.apply(grads) if `finite` (a replica-uniform bool), else nothing at all."""
        if self.fp16:
            # The LossScaleOptimizer skips non-finite steps itself, and must see them to lower
            # its scale; `grads` were made non-finite above whenever `finite` is False.
            self.optimizer.apply(grads, variables)
            return

        # optimizer.apply calls merge_call, which tf.distribute refuses inside a tf.cond branch
        # in replica context: branch in cross-replica context instead (what Keras's own
        # LossScaleOptimizer does).
        def cross_replica(strategy, grads, finite):
            def apply():
                strategy.extended.call_for_each_replica(self.optimizer.apply,
                                                        args=(grads, variables))

            tf.cond(strategy.experimental_local_results(finite)[0], apply, lambda: None)

        tf.distribute.get_replica_context().merge_call(cross_replica, args=(grads, finite))

    def _train_step(self, batch):
        """One TBPTT window of every row: forward, weighted NLL, clip, Adam step, step += 1.

        Args:
          batch: the data-contract dict of global (or distributed) batches.

        Returns:
          {'bits_per_sample', 'grad_norm' (before clipping), 'learning_rate'}: float32 scalars;
          'finite': bool scalar, False if the update was skipped (non-finite loss or gradients).
        """
        nll, count, norm, lr, finite = self.strategy.run(self._replica_step, args=(batch,))
        nll = self.strategy.reduce(tf.distribute.ReduceOp.SUM, nll, axis=None)
        count = self.strategy.reduce(tf.distribute.ReduceOp.SUM, count, axis=None)
        norm = self.strategy.experimental_local_results(norm)[0]
        lr = self.strategy.experimental_local_results(lr)[0]
        finite = self.strategy.experimental_local_results(finite)[0]
        # The step counts windows consumed (data position), skipped or not.
        self.step.assign_add(1)
        return {"bits_per_sample": losses.nats_to_bits(tf.math.divide_no_nan(nll, count)),
                "grad_norm": norm, "learning_rate": lr, "finite": finite}

    # ---------------------------------------------------------------------------- evaluation --
