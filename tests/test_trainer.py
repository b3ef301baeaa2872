"""Trainer core: losses, schedule, no retracing, convergence, resume, eval, distribution."""

import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines.windows import tbptt_windows
from samplernn_tf import evaluation, losses, quantization
from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
from samplernn_tf.model import SampleRNN
from samplernn_tf.trainer import LearningRate, Trainer

Q = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(batch=4, seq_len=32, **train):
    return Config(model=ModelConfig(frame_sizes=(8, 2), dim=32, emb_size=8, q_levels=Q),
                  data=DataConfig(seq_len=seq_len), train=TrainConfig(batch_size=batch, **train))


def batches_from_codes(codes, seq_len, frame_sizes):
    """codes [B, T] -> list of data-contract batches, reset on the first window."""
    w = tbptt_windows(codes, seq_len, frame_sizes)
    rows = codes.shape[0]
    return [{"tier_inputs": tuple(t[:, k] for t in w["tier_inputs"]),
             "sample_inputs": w["sample_inputs"][:, k], "targets": w["targets"][:, k],
             "weights": tf.ones([rows, seq_len]), "reset": tf.fill([rows], k == 0)}
            for k in range(w["targets"].shape[1])]


def random_batches(config, windows, seed=0):
    rows, seq_len = config.train.batch_size, config.data.seq_len
    codes = np.random.default_rng(seed).integers(
        0, Q, (rows, seq_len * windows + config.model.frame_sizes[0])).astype(np.int32)
    return batches_from_codes(codes, seq_len, config.model.frame_sizes)


def chord_batches(rows, seq_len, windows, sample_rate=8000):
    """Mu-law codes of a two-note chord, a random phase per row."""
    n = seq_len * windows + 8
    t = np.arange(n)[None] / sample_rate
    phase = np.random.default_rng(0).uniform(0, 2 * np.pi, (rows, 1))
    x = 0.35 * np.sin(2 * np.pi * 220 * t + phase) + 0.35 * np.sin(2 * np.pi * 330 * t + 2 * phase)
    codes = quantization.encode(x.astype(np.float32), "mu-law", Q).numpy()
    return batches_from_codes(codes, seq_len, (8, 2))


class LossesTest(tf.test.TestCase):

    def test_bits_nats(self):
        self.assertAllClose(losses.nats_to_bits(math.log(2.0) * 3.0), 3.0)
        self.assertAllClose(losses.bits_to_nats(losses.nats_to_bits(1.7)), 1.7)
        self.assertAllClose(losses.bits_to_nats(1.0), math.log(2.0))

    def test_weighted_nll_matches_numpy(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
        targets = rng.integers(0, 7, (2, 5)).astype(np.int32)
        weights = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.float32)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        total, count = losses.nll_nats(tf.cast(logits, tf.bfloat16), targets, weights)
        self.assertEqual(total.dtype, tf.float32)
        bf = tf.cast(tf.cast(logits, tf.bfloat16), tf.float32).numpy()
        nll_bf = -np.take_along_axis(bf - np.log(np.exp(bf).sum(-1, keepdims=True)),
                                     targets[..., None], -1)[..., 0]
        self.assertAllClose(total, (nll_bf * weights).sum(1), atol=1e-4)
        self.assertAllClose(count, [3, 5])
        self.assertAllClose(losses.mean_nll_nats(logits, targets, weights),
                            (nll * weights).sum() / 8, atol=1e-5)
        self.assertAllClose(losses.mean_nll_nats(logits, targets, np.zeros_like(weights)), 0.0)

    def test_softmax_nll_matches_tf(self):
        rng = np.random.default_rng(1)
        logits = tf.constant(rng.normal(size=(40, 9)) * 5, tf.float32)
        labels = tf.constant(rng.integers(0, 9, 40), tf.int32)
        up = tf.constant(rng.normal(size=40), tf.float32)
        results = []
        for fn in (losses.sparse_softmax_nll, lambda l, t: tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=t, logits=l)):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                y = fn(logits, labels)
            results.append((y, tape.gradient(y, logits, output_gradients=up)))
        self.assertAllClose(results[0][0], results[1][0], atol=1e-5)
        self.assertAllClose(results[0][1], results[1][1], atol=1e-5)

    def test_learning_rate_schedules(self):
        self.assertAllClose(LearningRate(1.0, "constant", warmup_steps=4)(1), 0.5)
        self.assertAllClose(LearningRate(1.0, "constant", warmup_steps=4)(10), 1.0)
        cos = LearningRate(1.0, "cosine", warmup_steps=10, max_steps=110)
        self.assertAllClose([cos(10), cos(60), cos(110), cos(500)], [1.0, 0.5, 0.0, 0.0], atol=1e-6)
        exp = LearningRate(2.0, "exponential", decay_rate=0.5, decay_steps=100)
        self.assertAllClose([exp(0), exp(100), exp(300)], [2.0, 1.0, 0.25])


class TrainerTest(tf.test.TestCase, parameterized.TestCase):

    def test_converges_on_a_chord(self):
        keras.utils.set_random_seed(0)
        config = tiny(batch=8, seq_len=64, learning_rate=3e-3)
        config = config.replace(model=ModelConfig(frame_sizes=(8, 2), dim=64, emb_size=16,
                                                  q_levels=Q))
        trainer = Trainer(config)
        data = chord_batches(8, 64, 16)
        bits = []
        for step in range(200):
            bits.append(float(trainer.train_step(data[step % len(data)])["bits_per_sample"]))
        self.assertGreater(bits[0], 0.9 * math.log2(Q))
        self.assertLess(np.mean(bits[-10:]), 0.35 * math.log2(Q), bits[::20])
        self.assertEqual(int(trainer.step), 200)
        self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)

    def test_resume_gives_the_same_next_loss(self):
        config = tiny(learning_rate=1e-2, warmup_steps=3, lr_schedule="cosine", max_steps=50)
        data = random_batches(config, 4)
        keras.utils.set_random_seed(1)
        first = Trainer(config)
        for b in data[:3]:
            first.train_step(b)
        path = first.checkpoint.save(os.path.join(self.get_temp_dir(), "ckpt"))
        # RNN state is not checkpointed: both runs reset every row at the resume point.
        resume_batch = dict(data[3], reset=tf.fill([4], True))
        want = first.train_step(resume_batch)
        keras.utils.set_random_seed(2)  # different init: everything must come from the checkpoint
        second = Trainer(config)
        second.checkpoint.restore(path).assert_consumed()
        self.assertEqual(int(second.step), 3)
        got = second.train_step(resume_batch)
        for k in want:
            self.assertAllClose(got[k], want[k], rtol=1e-6, atol=0, msg=k)
        for a, b in zip(first.model.weights, second.model.weights):
            self.assertAllClose(a, b, atol=1e-7)

    def test_checkpoint_restores_into_batch_size_one(self):
        config = tiny()
        data = random_batches(config, 2, seed=3)
        trainer = Trainer(config)
        trainer.train_step(data[0])
        path = trainer.checkpoint.save(os.path.join(self.get_temp_dir(), "ckpt"))
        single = SampleRNN(config.model, batch_size=1)
        tf.train.Checkpoint(model=single).restore(path).expect_partial()
        row = {"tier_inputs": tuple(t[3:4] for t in data[1]["tier_inputs"]),
               "sample_inputs": data[1]["sample_inputs"][3:4], "reset": tf.constant([True])}
        # Row 3 carries state from window 0 in the big model; reset both to compare weights only.
        trainer.model.reset_states()
        full = trainer.model(data[1]).numpy()
        self.assertAllClose(single(row)[0], full[3], atol=1e-5)

    def test_eval_step_is_stateless(self):
        config = tiny()
        data = random_batches(config, 2, seed=4)
        trainer = Trainer(config)
        trainer.train_step(data[0])
        before = tf.nest.map_structure(lambda t: t.numpy(), trainer.model.get_states())
        eval_step = evaluation.Evaluator(trainer.model).step
        states = trainer.model.initial_states(4)
        total, count, states = eval_step(data[0], states)
        total2, _, _ = eval_step(data[1], states)
        for a, b in zip(tf.nest.flatten(before), tf.nest.flatten(trainer.model.get_states())):
            self.assertAllEqual(a, b)
        logits, _ = trainer.model.forward(data[0], trainer.model.initial_states(4))
        nll, _ = losses.nll_nats(logits, data[0]["targets"], data[0]["weights"])
        self.assertAllClose(total, nll, rtol=1e-5)
        self.assertAllClose(count, [32] * 4)
        # Another row count works too (one more trace at most, then shapes are relaxed).
        half = tf.nest.map_structure(lambda t: t[:2], data[1])
        eval_step(half, trainer.model.initial_states(2))
        self.assertLessEqual(eval_step.experimental_get_tracing_count(), 2)

    @parameterized.parameters(("norm", "bf16"), ("value", "fp16"), ("none", "float32"))
    def test_clipping_and_precisions(self, clip_type, precision):
        config = tiny(clip_type=clip_type, clip_value=0.01, mixed_precision=precision,
                      learning_rate=1e-3)
        data = random_batches(config, 3, seed=5)
        trainer = Trainer(config)
        before = [v.numpy() for v in trainer.model.trainable_variables]
        for b in data:
            metrics = trainer.train_step(b)
        self.assertTrue(np.isfinite(float(metrics["bits_per_sample"])))
        self.assertGreater(float(metrics["grad_norm"]), 0.01)
        self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)
        moved = [np.abs(a - v.numpy()).max() for a, v in zip(before, trainer.model.trainable_variables)]
        self.assertGreater(max(moved), 0.0)
        self.assertEqual(int(trainer.optimizer.iterations), 3)

    def test_mirrored_strategy_matches_single_replica(self):
        """Two logical CPUs in a subprocess (device setup must precede TF initialization)."""
        script = textwrap.dedent("""
            import numpy as np, tensorflow as tf, keras
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
            sys_path = __import__("sys").path.insert(0, "tests")
            from test_trainer import tiny, random_batches
            from samplernn_tf.config import ConfigError, TrainConfig
            from samplernn_tf.trainer import Trainer
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
            config = tiny(learning_rate=1e-2, clip_value=0.5)
            try:
                Trainer(config.replace(train=TrainConfig(batch_size=3)), strategy)
                raise SystemExit("no ConfigError")
            except ConfigError as e:
                assert str(e).startswith("--batch_size"), e
            two, one = Trainer(config, strategy), Trainer(config)
            for a, b in zip(one.model.weights, two.model.weights):
                b.assign(a)
            data = random_batches(config, 3)
            ds = tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(lambda *x: tf.stack(x), *data))
            it = iter(two.distribute(ds))
            for b in data:
                m1, m2 = one.train_step(b), two.train_step(next(it))
                for k in m1:
                    np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-5)
            diff = max(float(tf.reduce_max(tf.abs(a - b.value))) for a, b in
                       zip(one.model.weights, two.model.weights))
            assert diff < 1e-5, diff
            assert int(two.step) == 3
            print("OK")
        """)
        out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                             text=True, timeout=300,
                             env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"))
        self.assertIn("OK", out.stdout, out.stderr[-3000:])


if __name__ == "__main__":
    tf.test.main()
