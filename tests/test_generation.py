"""Generation: equality with teacher-forced `model.forward`, priming, determinism, a tone."""

from unittest import mock

import numpy as np
import keras
import tensorflow as tf
from absl.testing import parameterized

from pipelines import dataset
from pipelines.windows import pad_for_windows, tbptt_windows
from samplernn_tf import generation, generation_core, quantization
from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
from samplernn_tf.model import SampleRNN

Q = 32


def tiny_config(frame_sizes=(8, 2), seq_len=32, **model_kw):
    model = dict(frame_sizes=frame_sizes, dim=32, emb_size=8, q_levels=Q)
    model.update(model_kw)
    return Config(model=ModelConfig(**model), data=DataConfig(seq_len=seq_len),
                  train=TrainConfig(batch_size=4))


def tiny_model(config, seed=0):
    keras.utils.set_random_seed(seed)
    return SampleRNN(config.model)


def teacher_forced_logits(model, config, codes, prime_codes=None):
    """Logits of `model.forward` over whole files [prime codes] + codes, window by window.

    Returns float32 [b, len(codes), Q]: the logits at the positions of `codes`.
    """
    m, d = config.model, config.data
    pad = quantization.zero_code(d.q_type, m.q_levels)
    full = codes if prime_codes is None else np.concatenate([prime_codes, codes], axis=1)
    stream = tf.stack([pad_for_windows(row, d.seq_len, m.top_frame_size, pad)[0] for row in full])
    w = tbptt_windows(stream, d.seq_len, m.frame_sizes)
    states = model.initial_states(full.shape[0])
    out = []
    for k in range(w["targets"].shape[1]):
        logits, states = model.forward({"tier_inputs": tuple(t[:, k] for t in w["tier_inputs"]),
                                        "sample_inputs": w["sample_inputs"][:, k]}, states)
        out.append(logits)
    logits = tf.concat(out, axis=1).numpy()
    start = full.shape[1] - codes.shape[1]
    return logits[:, start:full.shape[1]]


def prime_codes_of(config, prime):
    """The codes the generator makes of a prime: each row as the pipeline does a file."""
    from pipelines import audio
    d = config.data
    x = np.stack([dataset.pcm16_round_trip(audio.normalize(row, d.normalize, d.remove_dc)).numpy()
                  for row in prime])
    return quantization.encode(x, d.q_type, config.model.q_levels).numpy()


def noise_clip(rows, length, seed=0):
    return np.random.default_rng(seed).uniform(-0.8, 0.8, size=(rows, length)).astype(np.float32)


class TeacherForcingTest(tf.test.TestCase, parameterized.TestCase):
    """Feeding the generated codes back through `model.forward` gives the generator's logits."""

    @parameterized.named_parameters(
        ("gru_3tier_graph", dict(frame_sizes=(8, 2)), False, 1),
        ("gru_3tier_xla_blocks_of_2", dict(frame_sizes=(8, 2)), True, 2),
        ("lstm_2layer_skip_4tier_xla", dict(frame_sizes=(8, 4, 2), rnn_type="lstm", rnn_layers=2,
                                            skip_connections=True), True, 32),
        ("gru_2tier", dict(frame_sizes=(4,)), False, 1),
    )
    def test_generator_logits_equal_forward(self, model_kw, jit, frames_per_call):
        config = tiny_config(seq_len=16, **model_kw)
        model = tiny_model(config, seed=1)
        gen = generation.Generator(model, config, jit=jit, frames_per_call=frames_per_call)
        audio, codes, logits = gen.generate_with_logits(45, batch_size=3, temperature=1.0, seed=4)
        self.assertEqual(codes.shape, (3, 45))
        self.assertEqual(logits.shape, (3, 45, Q))
        self.assertAllClose(audio, quantization.decode(codes, "mu-law", Q))
        reference = teacher_forced_logits(model, config, codes)
        self.assertAllClose(logits, reference, atol=2e-5 if jit else 1e-6, rtol=1e-5)
        # The sampled codes are drawn from those logits: with a tiny temperature they are the argmax.
        _, greedy, glogits = gen.generate_with_logits(30, batch_size=2, temperature=1e-4, seed=0)
        self.assertAllEqual(greedy, np.argmax(glogits, -1))

    def test_primed_generation_equals_forward_over_prime_and_continuation(self):
        config = tiny_config()
        model = tiny_model(config, seed=2)
        gen = generation.Generator(model, config, jit=False)
        # 77 samples: 9 whole top frames of 8 plus 5 samples forced into the first frame.
        prime = noise_clip(2, 77, seed=3)
        _, codes, logits = gen.generate_with_logits(20, batch_size=2, temperature=1.0, seed=9,
                                                    prime=prime)
        reference = teacher_forced_logits(model, config, codes, prime_codes=prime_codes_of(config, prime))
        self.assertAllClose(logits, reference, atol=1e-6, rtol=1e-5)


class GeneratorTest(tf.test.TestCase, parameterized.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.config = tiny_config()
        cls.model = tiny_model(cls.config, seed=5)
        cls.gen = generation.Generator(cls.model, cls.config, jit=True)

    def test_same_seed_same_audio_and_chunks_equal_one_shot(self):
        a1, c1 = self.gen.generate(100, batch_size=2, temperature=0.9, seed=11)
        a2, c2 = self.gen.generate(100, batch_size=2, temperature=0.9, seed=11)
        _, c3 = self.gen.generate(100, batch_size=2, temperature=0.9, seed=12)
        self.assertAllEqual(c1, c2)
        self.assertAllEqual(a1, a2)
        self.assertNotAllEqual(c1, c3)
        self.assertEqual(a1.dtype, np.float32)
        self.assertEqual(c1.dtype, np.int32)
        self.assertTrue(np.all(np.abs(a1) <= 1.0))
        chunks = list(self.gen.stream(100, batch_size=2, temperature=0.9, seed=11, chunk_samples=24))
        self.assertEqual([c.shape[1] for _, c in chunks], [24, 24, 24, 24, 4])
        self.assertAllEqual(np.concatenate([c for _, c in chunks], axis=1), c1)

    def test_xla_graph_and_block_sizes_draw_the_same_codes(self):
        plain = generation.Generator(self.model, self.config, jit=False)
        blocks3 = generation.Generator(self.model, self.config, jit=True, frames_per_call=3)
        prime = noise_clip(1, 30, seed=2)
        for kw in ({}, {"prime": prime}):
            _, c_plain = plain.generate(75, batch_size=2, temperature=1.0, seed=3, **kw)
            _, c_xla = self.gen.generate(75, batch_size=2, temperature=1.0, seed=3, **kw)
            _, c_blocks = blocks3.generate(75, batch_size=2, temperature=1.0, seed=3, **kw)
            self.assertAllEqual(c_plain, c_xla)
            self.assertAllEqual(c_plain, c_blocks)

    def test_auto_jit_picks_a_path_per_batch_size_with_the_same_codes(self):
        plain = generation.Generator(self.model, self.config, jit=False)
        with mock.patch.object(generation_core, "AUTO_JIT_MAX_DIM", 16):  # dim 32: choose by batch
            auto = generation.Generator(self.model, self.config, jit=None, frames_per_call=2)
            for rows in (1, generation.AUTO_JIT_MAX_BATCH + 1):
                _, codes = auto.generate(40, batch_size=rows, temperature=1.0, seed=8)
                self.assertAllEqual(codes, plain.generate(40, batch_size=rows, temperature=1.0,
                                                          seed=8)[1])

    def test_per_row_temperature(self):
        _, codes, logits = self.gen.generate_with_logits(40, batch_size=2, temperature=[1e-4, 1.0],
                                                         seed=2)
        self.assertAllEqual(codes[0], np.argmax(logits[0], -1))
        self.assertNotAllEqual(codes[1], np.argmax(logits[1], -1))

    def test_priming_is_deterministic_and_the_whole_clip_matters(self):
        prime = noise_clip(1, 200, seed=1)
        early = prime.copy()
        early[:, :16] = -early[:, :16]  # differs only in the first 8% of the clip
        run = lambda p: self.gen.generate_with_logits(64, batch_size=2, temperature=1.0, seed=7,  # noqa: E731
                                                      prime=p)[1:]
        (a, la), (b, lb) = run(prime), run(prime)
        self.assertAllEqual(a, b)
        self.assertAllEqual(la, lb)
        self.assertEqual(a.shape, (2, 64))  # one prime row serves the whole batch
        # The state after the clip depends on its first samples: the continuation's
        # distributions differ (a random tiny model's sampled codes rarely flip on it).
        _, l_early = run(early)
        self.assertGreater(np.abs(la - l_early).max(), 1e-3)
        _, _, l_none = self.gen.generate_with_logits(64, batch_size=2, temperature=1.0, seed=7)
        self.assertGreater(np.abs(la - l_none).max(), 1e-3)
        # Same with a stream; the chunk size does not matter.
        chunks = list(self.gen.stream(64, batch_size=2, temperature=1.0, seed=7, prime=prime,
                                      chunk_samples=16))
        self.assertAllEqual(np.concatenate([c for _, c in chunks], axis=1), a)

    def test_bad_arguments(self):
        g = self.gen
        for n in (0, -5, 2.5):
            with self.assertRaisesRegex(ValueError, "num_samples must be a positive integer"):
                g.generate(n)
        for t in (0.0, -1.0, float("nan")):
            with self.assertRaisesRegex(ValueError, "temperature must be > 0"):
                g.generate(16, temperature=t)
        with self.assertRaisesRegex(ValueError, "batch_size must be a positive integer"):
            g.generate(16, batch_size=0)
        with self.assertRaisesRegex(ValueError, "temperature must be a scalar or"):
            g.generate(16, batch_size=2, temperature=[1.0, 1.0, 1.0])
        with self.assertRaisesRegex(ValueError, "at least one top frame .8 samples"):
            g.generate(16, prime=np.zeros([1, 7], np.float32))
        with self.assertRaisesRegex(ValueError, r"prime must be float audio \[time\] or \[batch, time\]"):
            g.generate(16, prime=np.zeros([1, 1, 64], np.float32))
        with self.assertRaisesRegex(ValueError, "non-finite"):
            g.generate(16, prime=np.full([1, 64], np.nan, np.float32))
        with self.assertRaisesRegex(ValueError, "prime has 3 rows; expected 1 or batch_size=2"):
            g.generate(16, batch_size=2, prime=np.zeros([3, 64], np.float32))
        with self.assertRaisesRegex(ValueError, "prime is at 8000 Hz but the model runs at 16000 Hz"):
            g.generate(16, prime=np.zeros([1, 64], np.float32), prime_sample_rate=8000)

    def test_graph_checks_of_the_core(self):
        """The checks the exported signatures rely on (no Python validation there)."""
        core = self.gen.core
        f = tf.function(lambda n, t: core.generate(n, 1, t, tf.constant(0, tf.int64))["codes"])
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "num_samples must be positive"):
            f(tf.constant(-3), tf.constant(1.0))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "temperature must be > 0"):
            f(tf.constant(8), tf.constant(0.0))
        g = tf.function(lambda p: core.generate(8, 1, 1.0, tf.constant(0, tf.int64), prime=p)["codes"],
                        input_signature=[tf.TensorSpec([None, None], tf.float32)])
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "at least 8 samples"):
            g(tf.zeros([1, 5]))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "non-finite"):
            g(tf.fill([1, 16], np.inf))


class NoiseTest(tf.test.TestCase):

    def test_gumbel_noise_is_keyed_and_well_distributed(self):
        key = generation.seed_key(tf.constant(5, tf.int64))
        g = generation.gumbel_noise(key, tf.range(64, dtype=tf.int64), 4, 256).numpy()
        again = generation.gumbel_noise(key, tf.range(32, 96, dtype=tf.int64), 4, 256).numpy()
        self.assertAllEqual(g[:, 32:], again[:, :32])       # a function of the position
        self.assertNotAllEqual(g[0], g[1])                   # rows differ
        self.assertNear(g.mean(), 0.5772, 0.02)              # Euler-Mascheroni
        self.assertNear(g.std(), np.pi / np.sqrt(6), 0.03)
        other = generation.gumbel_noise(generation.seed_key(tf.constant(6, tf.int64)),
                                        tf.range(64, dtype=tf.int64), 4, 256).numpy()
        self.assertLess(abs(np.corrcoef(g.ravel(), other.ravel())[0, 1]), 0.02)


class ToneTest(tf.test.TestCase):
    """A tiny model trained on a pure tone, sampled near-greedily, plays that tone."""

    def test_generated_tone_has_the_trained_frequency(self):
        rate, freq = 16000, 1000.0
        config = Config(model=ModelConfig(frame_sizes=(8, 2), dim=32, emb_size=8, q_levels=Q),
                        data=DataConfig(seq_len=64, sample_rate=rate),
                        train=TrainConfig(batch_size=8))
        t = np.arange(rate // 2) / rate
        codes = quantization.encode(0.8 * np.sin(2 * np.pi * freq * t), "mu-law", Q).numpy()
        corpus = dataset.Corpus(names=["tone"], codes=[codes.astype(np.int16)], sample_rate=rate)
        keras.utils.set_random_seed(0)
        rows = config.train.batch_size
        model = SampleRNN(config.model, batch_size=rows)
        optimizer = keras.optimizers.Adam(1e-2)
        ds = dataset.train_dataset(corpus, config, batch_size=rows, seed=0)

        @tf.function
        def train_step(batch):
            with tf.GradientTape() as tape:
                logits = model(batch, training=True)
                nll = tf.nn.sparse_softmax_cross_entropy_with_logits(batch["targets"], logits)
                loss = tf.reduce_sum(nll * batch["weights"]) / tf.reduce_sum(batch["weights"])
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(tf.clip_by_global_norm(grads, 1.0)[0], model.trainable_variables)
            return loss

        losses = [float(train_step(batch)) for batch in ds.take(250)]
        self.assertLess(np.mean(losses[-20:]), 0.25 * np.mean(losses[:5]))
        gen = generation.Generator(model, config)
        audio, _ = gen.generate(2048, batch_size=2, temperature=1e-3, seed=0)
        for row in audio:
            spectrum = np.abs(np.fft.rfft(row[512:] * np.hanning(1536)))
            peak = np.fft.rfftfreq(1536, 1.0 / rate)[np.argmax(spectrum[1:]) + 1]
            self.assertNear(peak, freq, rate / 1536)
