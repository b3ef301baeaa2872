"""Window arithmetic against a NumPy reference written from the seed document."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines import windows


def reference_windows(x, seq_len, frame_sizes):
    """Loops written straight from shared/seed/README.md, 0-based. x: [batch, T]."""
    L, B, F = seq_len, frame_sizes[0], frame_sizes[-1]
    T = x.shape[-1]
    out = {"tier_inputs": [[] for _ in frame_sizes], "sample_inputs": [], "targets": []}
    k = 0
    while k * L + L + B <= T:
        w = x[:, k * L: k * L + L + B]
        for t, f in enumerate(frame_sizes):
            span = w[:, B - f: B - f + L]
            out["tier_inputs"][t].append(np.stack([span[:, j * f:(j + 1) * f] for j in range(L // f)], 1))
        out["sample_inputs"].append(np.stack([w[:, B - F + i: B + i] for i in range(L)], 1))
        out["targets"].append(w[:, B: B + L])
        k += 1
    return {"tier_inputs": [np.stack(t, 1) for t in out["tier_inputs"]],
            "sample_inputs": np.stack(out["sample_inputs"], 1),
            "targets": np.stack(out["targets"], 1)}


class WindowsTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        (16, [8, 2], 3, 100), (32, [16], 1, 77), (64, [64, 16, 4], 2, 300),
        (8, [8, 4, 2], 4, 25), (4, [4, 1], 2, 13), (24, [8], 1, 32))
    def test_matches_numpy_reference(self, seq_len, frame_sizes, batch, T):
        rng = np.random.default_rng(seq_len + T)
        x = rng.integers(0, 256, size=(batch, T)).astype(np.int32)
        got = windows.tbptt_windows(x, seq_len, frame_sizes)
        want = reference_windows(x, seq_len, frame_sizes)
        n = 1 + (T - seq_len - frame_sizes[0]) // seq_len
        self.assertEqual(got["targets"].shape, (batch, n, seq_len))
        self.assertAllEqual(got["targets"], want["targets"])
        self.assertAllEqual(got["sample_inputs"], want["sample_inputs"])
        self.assertEqual(got["sample_inputs"].shape, (batch, n, seq_len, frame_sizes[-1]))
        self.assertLen(got["tier_inputs"], len(frame_sizes))
        for f, g, w in zip(frame_sizes, got["tier_inputs"], want["tier_inputs"]):
            self.assertEqual(g.shape, (batch, n, seq_len // f, f))
            self.assertAllEqual(g, w)
        # Unbatched input gives the same windows without the batch dimension.
        single = windows.tbptt_windows(x[0], seq_len, frame_sizes)
        self.assertAllEqual(single["targets"], want["targets"][0])
        self.assertAllEqual(single["sample_inputs"], want["sample_inputs"][0])

    @parameterized.parameters(([8, 2], 16), ([16], 32), ([64, 16, 4], 64))
    def test_causal_offsets(self, frame_sizes, seq_len):
        # Encode each sample by its position: inputs must come strictly before their targets.
        x = np.arange(seq_len * 3 + frame_sizes[0], dtype=np.int32)
        got = windows.tbptt_windows(x, seq_len, frame_sizes)
        targets = got["targets"].numpy()
        B = frame_sizes[0]
        for f, tier in zip(frame_sizes, got["tier_inputs"]):
            tier = tier.numpy()
            for j in range(seq_len // f):
                frame = tier[:, j]           # conditions targets at positions covered below
                covered = targets[:, j * f: j * f + f]
                self.assertTrue(np.all(frame.max(-1) < covered.min(-1)))
                # The frame ends exactly where its targets begin: no gap, no overlap.
                self.assertAllEqual(frame[:, -1] + 1, covered[:, 0])
        si = got["sample_inputs"].numpy()
        self.assertAllEqual(si[..., -1] + 1, targets)
        self.assertAllEqual(si[..., 0] + frame_sizes[-1], targets)
        # Consecutive windows continue: window k+1's first target follows window k's last.
        self.assertAllEqual(targets[1:, 0], targets[:-1, -1] + 1)
        self.assertEqual(targets[0, 0], B)

    @parameterized.parameters((0, 16, 8), (1, 16, 8), (16, 16, 8), (17, 16, 8), (100, 32, 16))
    def test_pad_for_windows(self, T, L, B):
        codes = np.arange(1, T + 1, dtype=np.int32)
        padded, weights = windows.pad_for_windows(codes, L, B, pad_code=0)
        n = max(1, -(-T // L))
        self.assertEqual(windows.num_windows(T, L), n)
        self.assertEqual(int(windows.num_windows(tf.constant(T), L)), n)
        want = np.concatenate([np.zeros(B), codes, np.zeros(n * L - T)]).astype(np.int32)
        self.assertAllEqual(padded, want)
        self.assertAllEqual(weights, (np.arange(n * L) < T).astype(np.float32))
        # Every real sample is a target of exactly one window, in order.
        w = windows.tbptt_windows(padded, L, [B])
        flat_targets = w["targets"].numpy().reshape(-1)
        self.assertAllEqual(flat_targets[weights.numpy() > 0], codes)

    def test_rejects_bad_sizes(self):
        with self.assertRaisesRegex(ValueError, "multiple"):
            windows.tbptt_windows(np.zeros(100, np.int32), 16, [8, 3])
        with self.assertRaisesRegex(ValueError, "seq_len"):
            windows.tbptt_windows(np.zeros(100, np.int32), 12, [8, 2])
