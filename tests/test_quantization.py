"""Quantization against hand-written NumPy references, exact inverses and known values."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from samplernn_tf import quantization as qz


def np_encode(x, q_type, Q):
    x = np.clip(x.astype(np.float64), -1, 1)
    if q_type == "mu-law":
        mu = Q - 1
        y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    elif q_type == "a-law":
        A = 87.6
        ax = np.abs(x)
        with np.errstate(divide="ignore"):
            large = (1 + np.log(np.maximum(A * ax, 1e-30))) / (1 + np.log(A))
        y = np.sign(x) * np.where(ax < 1 / A, A * ax / (1 + np.log(A)), large)
    else:
        y = x
    return np.clip(np.round((y + 1) / 2 * (Q - 1)), 0, Q - 1).astype(np.int32)


class QuantizationTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.product(q_type=["linear", "mu-law", "a-law"], q_levels=[2, 3, 16, 255, 256, 1024])
    def test_codes_round_trip_exactly(self, q_type, q_levels):
        codes = np.arange(q_levels, dtype=np.int32)
        audio = qz.decode(codes, q_type, q_levels)
        self.assertAllInRange(audio, -1.0, 1.0)
        self.assertAllEqual(qz.encode(audio, q_type, q_levels), codes)
        # Monotone: a higher code is a louder positive amplitude.
        self.assertTrue(np.all(np.diff(audio.numpy()) > 0))

    @parameterized.product(q_type=["linear", "mu-law", "a-law"], q_levels=[16, 256])
    def test_matches_numpy_reference(self, q_type, q_levels):
        x = np.random.default_rng(0).uniform(-1.2, 1.2, 5000).astype(np.float32)
        x = np.concatenate([x, [-1, 0, 1, 1e-4, -1e-4]]).astype(np.float32)
        got = qz.encode(x, q_type, q_levels).numpy()
        want = np_encode(x, q_type, q_levels)
        # float32 vs float64 may flip a value lying within rounding distance of a boundary.
        self.assertLessEqual(np.mean(got != want), 1e-3)
        self.assertLessEqual(np.max(np.abs(got - want)), 1)

    @parameterized.product(q_type=["linear", "mu-law", "a-law"])
    def test_audio_round_trip_within_half_step(self, q_type):
        Q = 256
        x = np.linspace(-1, 1, 10001).astype(np.float32)
        y = qz.compress(x, q_type, Q).numpy()
        y_hat = qz.compress(qz.decode(qz.encode(x, q_type, Q), q_type, Q), q_type, Q).numpy()
        self.assertLessEqual(np.max(np.abs(y - y_hat)), 1.0 / (Q - 1) + 1e-5)
        self.assertAllClose(qz.expand(qz.compress(x, q_type, Q), q_type, Q), x, atol=1e-5)

    def test_known_values(self):
        self.assertAllEqual(qz.encode([-1.0, 0.0, 1.0], "linear", 256), [0, 128, 255])
        self.assertAllEqual(qz.encode([-1.0, 0.0, 1.0], "mu-law", 256), [0, 128, 255])
        self.assertAllEqual(qz.encode([-1.0, 0.0, 1.0], "linear", 255), [0, 127, 254])
        # mu-law with mu=255: x = 0.5 -> ln(1 + 127.5)/ln(256) = 0.8757 -> round(239.15) = 239.
        self.assertEqual(int(qz.encode(0.5, "mu-law", 256)), 239)
        self.assertEqual(int(qz.encode(2.0, "a-law", 256)), 255)  # clipped
        for q_type in ("linear", "mu-law", "a-law"):
            for Q in (2, 255, 256):
                self.assertEqual(qz.zero_code(q_type, Q), int(qz.encode(0.0, q_type, Q)))

    def test_frame_tier_input_range(self):
        self.assertAllClose(qz.frame_tier_input([0, 255], 256), [-2.0, 2.0])
        self.assertAllClose(qz.frame_tier_input([0, 1, 2], 3), [-2.0, 0.0, 2.0])
