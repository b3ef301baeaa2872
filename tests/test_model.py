"""SampleRNN model: causality, lookup table, hand-written RNN gradients, state handling."""

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines.windows import tbptt_windows
from samplernn_tf import layers
from samplernn_tf.config import ModelConfig
from samplernn_tf.model import SampleRNN

Q = 32


def tiny_config(**kw):
    base = dict(frame_sizes=(8, 2), dim=32, emb_size=8, q_levels=Q)
    base.update(kw)
    return ModelConfig(**base)


def make_windows(codes, seq_len, frame_sizes):
    """codes int [B, T] -> list over windows of model input dicts (reset on the first one)."""
    w = tbptt_windows(codes, seq_len, frame_sizes)
    n = w["targets"].shape[1]
    out = []
    for k in range(n):
        out.append({"tier_inputs": tuple(t[:, k] for t in w["tier_inputs"]),
                    "sample_inputs": w["sample_inputs"][:, k], "targets": w["targets"][:, k],
                    "reset": tf.fill([codes.shape[0]], k == 0)})
    return out


def random_codes(rows, length, seed=0):
    return np.random.default_rng(seed).integers(0, Q, size=(rows, length)).astype(np.int32)


def copy_weights(src, dst):
    for a, b in zip(src.weights, dst.weights):
        b.assign(a)


class RecurrenceGradientTest(tf.test.TestCase, parameterized.TestCase):
    """The hand-written backward passes against autodiff through a plain unrolled loop."""

    @parameterized.parameters("gru", "lstm")
    def test_matches_autodiff(self, kind):
        t, b, d = 7, 3, 5
        g = 3 if kind == "gru" else 4
        rng = np.random.default_rng(1)
        xp = tf.constant(rng.normal(size=(t, b, g * d)), tf.float32)
        h0 = tf.constant(rng.normal(size=(b, d)), tf.float32)
        c0 = tf.constant(rng.normal(size=(b, d)), tf.float32)
        u = tf.constant(rng.normal(size=(d, g * d)) * 0.5, tf.float32)
        bias = tf.constant(rng.normal(size=(g * d,)), tf.float32)
        w_out = tf.constant(rng.normal(size=(t, b, d)), tf.float32)
        w_c = tf.constant(rng.normal(size=(b, d)), tf.float32)

        def fast():
            if kind == "gru":
                return layers.gru_sequence(xp, h0, u, bias), None
            hs, cs = layers.lstm_sequence(xp, h0, c0, u)
            return hs, cs[-1]

        def slow():
            h, c, out = h0, c0, []
            for k in range(t):
                if kind == "gru":
                    h = layers.gru_cell(xp[k], h, u, bias)
                else:
                    h, c = layers.lstm_cell(xp[k], h, c, u)
                out.append(h)
            return tf.stack(out), (None if kind == "gru" else c)

        results = []
        for fn in (fast, slow):
            with tf.GradientTape() as tape:
                tape.watch([xp, h0, c0, u, bias])
                hs, c_last = fn()
                loss = tf.reduce_sum(hs * w_out)
                if c_last is not None:
                    loss += tf.reduce_sum(c_last * w_c)
            grads = tape.gradient(loss, [xp, h0, c0, u, bias])
            results.append((hs, grads))
        self.assertAllClose(results[0][0], results[1][0], atol=1e-5)
        for got, want in zip(results[0][1], results[1][1]):
            if want is None:
                self.assertIsNone(got)
            else:
                self.assertAllClose(got, want, atol=1e-4, rtol=1e-4)


class CudnnLayoutTest(tf.test.TestCase):
    """The GPU path feeds our GRU's weights to Keras's cuDNN GRU in Keras's layout. Keras's
    generic GRU reads the same layout, so matching it on CPU proves the conversion."""

    def test_keras_gru_with_converted_weights_matches_ours(self):
        rnn = layers.RNN(5, 8, rnn_type="gru", weight_norm=True, learn_h0=False, name="g")
        # Non-trivial biases, so that a wrong gate order or bias row cannot pass.
        rnn.recurrent_bias.assign(tf.random.normal([24], seed=1))
        rnn.input_proj.bias.assign(tf.random.normal([24], seed=2))
        x = tf.random.normal([7, 3, 5], seed=3)      # time-major [T, B, in]
        h0 = tf.random.normal([3, 8], seed=4)
        ours, (h_ours,) = rnn.call(x, (h0,))
        keras_gru = keras.layers.GRU(8, reset_after=True, return_sequences=True, return_state=True)
        keras_gru.build((3, 7, 5))
        keras_gru.set_weights([w.numpy() for w in rnn.keras_gru_weights()])
        theirs, h_theirs = keras_gru(tf.transpose(x, [1, 0, 2]), initial_state=h0)
        self.assertAllClose(tf.transpose(theirs, [1, 0, 2]), ours, atol=1e-5)
        self.assertAllClose(h_theirs, h_ours, atol=1e-5)


class SampleRNNTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(((8, 2), 16), ((16,), 32), ((16, 4, 2), 32))
    def test_causality(self, frame_sizes, seq_len):
        cfg = tiny_config(frame_sizes=frame_sizes)
        model = SampleRNN(cfg)
        big = frame_sizes[0]
        base = random_codes(1, seq_len + big, seed=seq_len)
        # Row p perturbs window sample B + p (= target p) in every tier's view of it.
        rows = np.repeat(base, seq_len, axis=0)
        for p in range(seq_len):
            rows[p, big + p] = (rows[p, big + p] + Q // 2) % Q
        ref = make_windows(base, seq_len, frame_sizes)[0]
        pert = make_windows(rows, seq_len, frame_sizes)[0]
        want, _ = model.forward(ref, model.initial_states(1))
        got, _ = model.forward(pert, model.initial_states(seq_len))
        want, got = want.numpy()[0], got.numpy()
        for p in range(seq_len):
            self.assertAllClose(got[p, :p + 1], want[:p + 1], atol=1e-6, rtol=0,
                                msg=f"target <= {p} depends on sample {p}")
            if p + 1 < seq_len:
                self.assertGreater(np.abs(got[p, p + 1] - want[p + 1]).max(), 1e-4,
                                   msg=f"target {p + 1} ignores the sample just before it")

    def test_lookup_table_equals_naive(self):
        model = SampleRNN(tiny_config(frame_sizes=(8, 4)))
        mlp = model.sample_mlp
        codes = tf.constant(random_codes(50, 4, seed=3))
        weights = [mlp.embedding, mlp.first.v, mlp.first.g]
        grads = []
        for fn in (lambda: layers.gather_sum(mlp.table(), codes), lambda: mlp.first_naive(codes)):
            with tf.GradientTape() as tape:
                out = fn()
                loss = tf.reduce_sum(tf.sin(out))
            grads.append((out, tape.gradient(loss, weights)))
        self.assertAllClose(grads[0][0], grads[1][0], atol=1e-5)
        for a, b in zip(grads[0][1], grads[1][1]):
            self.assertAllClose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=1e-5)

    def test_stateful_equals_stateless_carried(self):
        cfg = tiny_config()
        model = SampleRNN(cfg, batch_size=2)
        wins = make_windows(random_codes(2, 16 * 4 + 8, seed=4), 16, cfg.frame_sizes)
        states = model.initial_states(2)
        for w in wins:
            got = model(w)
            want, states = model.forward(w, model.apply_reset(states, w["reset"]))
            self.assertAllClose(got, want, atol=1e-6)
        for a, b in zip(tf.nest.flatten(model.get_states()), tf.nest.flatten(states)):
            self.assertAllClose(a, b, atol=1e-6)

    def test_per_row_reset(self):
        cfg = tiny_config(rnn_type="lstm", rnn_layers=2)
        model = SampleRNN(cfg, batch_size=3)
        never = SampleRNN(cfg, batch_size=3)
        copy_weights(model, never)
        # Non-zero h0, so that "back to h0" differs from "back to zeros".
        for w in model.weights:
            if "h0" in w.path:
                w.assign(tf.random.normal(w.shape))
        copy_weights(model, never)
        wins = make_windows(random_codes(3, 16 * 3 + 8, seed=5), 16, cfg.frame_sizes)
        for w in wins[:2]:
            model(w)
            never(w)
        last = dict(wins[2], reset=tf.constant([False, True, False]))
        got = model(last).numpy()
        kept = never(dict(wins[2], reset=tf.constant([False, False, False]))).numpy()
        self.assertAllClose(got[[0, 2]], kept[[0, 2]], atol=1e-6)
        row1 = {"tier_inputs": tuple(t[1:2] for t in last["tier_inputs"]),
                "sample_inputs": last["sample_inputs"][1:2]}
        fresh, _ = model.forward(row1, model.initial_states(1))
        self.assertAllClose(got[1], fresh[0], atol=1e-6)
        self.assertGreater(np.abs(got[1] - kept[1]).max(), 1e-4)
        # reset_states(mask) touches only the masked rows.
        before = tf.nest.map_structure(lambda t: t.numpy(), model.get_states())
        model.reset_states(tf.constant([True, False, False]))
        h0 = model.initial_states(3)
        for b, a, i in zip(tf.nest.flatten(before), tf.nest.flatten(model.get_states()),
                           tf.nest.flatten(h0)):
            self.assertAllClose(a[0], i[0])
            self.assertAllClose(a[1:], b[1:])

    def test_recurrent_init_orthogonal_per_gate(self):
        model = SampleRNN(tiny_config(rnn_type="lstm"))
        u = model.tiers[0].rnns[0].recurrent.value().numpy()
        blocks = np.split(u, 4, axis=1)
        for blk in blocks:
            self.assertAllClose(blk.T @ blk, np.eye(32), atol=1e-4)
        self.assertGreater(np.abs(blocks[0] - blocks[1]).max(), 0.1)

    def test_state_not_in_weights_or_checkpoint_and_batch1_restore(self):
        cfg = tiny_config()
        model = SampleRNN(cfg, batch_size=4)
        n_state = len(tf.nest.flatten(model.state_variables))
        self.assertEqual(n_state, 2)
        state_ids = {id(v) for v in tf.nest.flatten(model.state_variables)}
        self.assertFalse(state_ids & {id(v.value) for v in model.weights})
        wins = make_windows(random_codes(4, 16 * 2 + 8, seed=6), 16, cfg.frame_sizes)
        path = tf.train.Checkpoint(model=model).save(self.get_temp_dir() + "/ckpt")
        names = [n for n, _ in tf.train.list_variables(path)]
        self.assertFalse([n for n in names if "state" in n], names)
        self.assertLen([n for n in names if n.startswith("model/")], len(model.weights))
        small = SampleRNN(cfg, batch_size=1)
        tf.train.Checkpoint(model=small).restore(path).assert_existing_objects_matched()
        for w in wins:
            big_logits = model(w)
            one = {"tier_inputs": tuple(t[2:3] for t in w["tier_inputs"]),
                   "sample_inputs": w["sample_inputs"][2:3], "reset": w["reset"][2:3]}
            self.assertAllClose(small(one)[0], big_logits[2], atol=1e-5)

    @parameterized.named_parameters(
        ("lstm_skip", dict(rnn_type="lstm", rnn_layers=2, skip_connections=True)),
        ("gru_skip_no_wn", dict(rnn_layers=3, skip_connections=True, weight_norm=False,
                                learn_h0=False)),
        ("dropout", dict(rnn_layers=2, dropout=0.5)),
        ("three_tier", dict(frame_sizes=(16, 4, 2))))
    def test_options_build_and_run(self, overrides):
        cfg = tiny_config(**overrides)
        model = SampleRNN(cfg, batch_size=2)
        w = make_windows(random_codes(2, 32 + cfg.frame_sizes[0], seed=7), 32, cfg.frame_sizes)[0]
        states = model.initial_states(2)
        a, _ = model.forward(w, states, training=False)
        b, _ = model.forward(w, states, training=False)
        self.assertAllEqual(a, b)
        self.assertEqual(a.shape, (2, 32, Q))
        with tf.GradientTape() as tape:
            c = model(w, training=True)
            loss = tf.reduce_mean(c)
        grads = tape.gradient(loss, model.trainable_variables)
        self.assertTrue(all(g is not None for g in grads))
        if cfg.dropout:
            self.assertGreater(np.abs(c - a).max(), 1e-4)
        if not cfg.learn_h0:
            self.assertFalse([v for v in model.weights if "h0" in v.path])

    def test_step_methods_match_window(self):
        """Per-tier `step` and `SampleMLP.logits` reproduce the window computation."""
        cfg = tiny_config(frame_sizes=(8, 2), rnn_type="lstm")
        model = SampleRNN(cfg)
        w = make_windows(random_codes(2, 16 + 8, seed=8), 16, cfg.frame_sizes)[0]
        want, _ = model.forward(w, model.initial_states(2))
        top, mid = model.tiers
        s_top, s_mid = model.initial_states(2)
        params = model.step_params()
        self.assertEqual(params["sample_mlp"]["table"].shape, (2, Q, 32))
        p_top, p_mid = params["tiers"]
        got = []
        for j in range(2):
            cond_mid, s_top = top.step(w["tier_inputs"][0][:, j], None, s_top, p_top)
            for m in range(4):
                cond_s, s_mid = mid.step(w["tier_inputs"][1][:, 4 * j + m], cond_mid[:, m], s_mid,
                                         p_mid if m % 2 else None)
                for i in range(2):
                    pos = 8 * j + 2 * m + i
                    got.append(model.sample_mlp.logits(w["sample_inputs"][:, pos], cond_s[:, i],
                                                       params["sample_mlp"] if i else None))
        self.assertAllClose(tf.stack(got, 1), want, atol=1e-5)

    def test_bf16_close_to_float32(self):
        cfg = tiny_config()
        f32 = SampleRNN(cfg)
        bf16 = SampleRNN(cfg, compute_dtype="bf16")
        copy_weights(f32, bf16)
        w = make_windows(random_codes(2, 24, seed=9), 16, cfg.frame_sizes)[0]
        a, _ = f32.forward(w, f32.initial_states(2))
        b, sb = bf16.forward(w, bf16.initial_states(2))
        self.assertEqual(b.dtype, tf.float32)
        self.assertEqual(sb[0][0][0].dtype, tf.float32)
        self.assertAllClose(tf.nn.softmax(a), tf.nn.softmax(b), atol=0.03)


if __name__ == "__main__":
    tf.test.main()
