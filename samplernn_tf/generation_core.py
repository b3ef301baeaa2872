"""Generation's graph machinery, shared by `samplernn_tf.generation.Generator` (the user-facing
API and its argument checks) and the SavedModel (`samplernn_tf.export`): the XLA constants and
`GenerationCore`, which builds the graphs for priming, the frame loop, generation and scoring
(one graph per call). The sampling noise is in `samplernn_tf.sampling`.

Design (see also docs/serving.md):
  * One `tf.while_loop` over top-tier frames inside one `tf.function`; no Python per sample or
    per frame. The loop body generates one whole top frame (B samples): it is unrolled
    statically in Python, so each frame tier runs exactly once per its frame and the
    sample-level MLP once per sample, with every slice index known at trace time.
  * The body can be XLA-compiled on its own (`jit=True`): the loop stays a plain TF loop over a
    dynamic number of frames, so one compilation serves every length and batch size is the
    only shape XLA sees change. (A jit over the whole loop would need a static length and
    recompile per length.)
  * The steps are the model's own (`FrameTier.step`, `SampleMLP.logits`), fed the effective
    weights that `SampleRNN.step_params()` computes once per call, outside the loop
    (weight-normalized kernels, biases, the sample MLP's [F, Q, D] lookup table: a gather-sum
    replaces embedding + matmul). The state is carried as tensors; the stateful training
    variables are never touched, so concurrent calls share nothing.
  * Sampling is Gumbel-max, `argmax(logits / T + g)`, with the noise `g` drawn from a
    counter-based integer hash of (seed, position, row, class). `tf.random.stateless_categorical`
    would be the obvious choice, but it has no XLA kernel for int64 seeds and XLA's stateless RNG
    draws a different stream than TF's kernels, so the same seed would give different audio
    with and without XLA (e.g. under TF Serving without XLA). The hash is exact integer math, so
    the noise is bit-identical on every path; position-keyed noise also makes chunked
    generation equal one-shot generation.
  * Positions: the generated stream is the training stream of a file: B samples of silence,
    then the prime (if any), then the new samples, exactly as `pipelines.windows.pad_for_windows`
    lays out a file. Top frame j reads stream[jB : (j+1)B] and conditions targets
    stream[(j+1)B : (j+2)B]; a tier of frame size f reads the f codes before its targets.
"""

from __future__ import annotations

import math

import tensorflow as tf

from samplernn_tf import quantization
from samplernn_tf.config import Config
from samplernn_tf.sampling import gumbel_noise, seed_key

# Top frames per XLA launch (the XLA loop's buffers have this static size).
DEFAULT_FRAMES_PER_CALL = 32
# jit=None (auto): XLA at dim <= AUTO_JIT_MAX_DIM; above, XLA for batches of at most
# AUTO_JIT_MAX_BATCH rows and the plain TF loop for larger ones (measured on 2 CPU cores:
# bench/generate_speed.py).
AUTO_JIT_MAX_DIM = 512
AUTO_JIT_MAX_BATCH = 8


# ----------------------------------------------------------------------------- the core --

class GenerationCore:
    """The graph-building functions shared by in-process generation and the SavedModel.

    Every method builds ops (call it inside a `tf.function`); none reads or writes a variable
    other than the model weights. Shapes: b rows, B top frame size, F bottom frame size,
    Q levels, D dim.

    Args:
      model: a `samplernn_tf.model.SampleRNN` (any batch_size; its state variables are unused).
      config: the run's Config (quantization, normalization, seq_len).
      jit: XLA-compile the loop body: blocks of `frames_per_call` frames per XLA launch (a
        launch costs ~10-20 us; 32 frames per launch is +20% at dim 256, batch 1). None = auto:
        XLA at dim <= 512, and above it for batches of <= 8 rows (chosen in the graph).
    """

    def __init__(self, model, config: Config, jit: bool | None = None,
                 frames_per_call: int = DEFAULT_FRAMES_PER_CALL):
        self.model = model
        self.config = config
        m = config.model
        self.frame_sizes = m.frame_sizes
        self.B, self.F, self.Q, self.D = m.top_frame_size, m.bottom_frame_size, m.q_levels, m.dim
        self.ratios = [t.ratio for t in model.tiers]
        self.cdtype = model.cdtype
        self.pad_code = quantization.zero_code(config.data.q_type, self.Q)
        self.jit = jit
        self.frames_per_call = max(1, int(frames_per_call))
        self._block_jit = tf.function(self.frame_block, jit_compile=True)

    # -- weights and the model's own step functions ------------------------------------------

    def params(self):
        """The model's effective weights (weight norm applied, biases read, the sample MLP's
        [F, Q, D] lookup table), computed once per call outside every loop."""
        return self.model.step_params()

    def tier_step(self, k, p, frame, cond, state):
        """Tier k on ONE frame: int32 [b, f], [b, D] or None, state -> ([b, ratio, D], state)."""
        return self.model.tiers[k].step(frame, cond, state, params=p["tiers"][k])

    def mlp_logits(self, p, prev_codes, cond):
        """Sample MLP for one sample via the lookup table: int32 [b, F], [b, D] -> f32 [b, Q]."""
        return self.model.sample_mlp.logits(prev_codes, cond, params=p["sample_mlp"])

    # -- the loop ----------------------------------------------------------------------------

    def frame_body(self, p, states, last, pos, key, temps, forced, force_mask, want_logits=False):
        """Generates one top frame: B new samples. Statically unrolled.

        Args:
          p: `params()`.
          states: the model's state structure.
          last: int32 [b, B], the B codes before this frame's targets (the top tier's input).
          pos: int64 scalar, stream position of the frame's first target (keys the noise).
          key: uint32 [2]. temps: float32 [b] temperatures.
          forced: int32 [b, B]; force_mask: bool [B]: where set, the code at that position is
            taken from `forced` instead of sampled (the tail of a prime).
          want_logits: also return the logits (tests and analysis).

        Returns:
          (codes int32 [b, B], new states, logits float32 [b, B, Q] or None).
        """
        b = tf.shape(last)[0]
        noise = gumbel_noise(key, pos + tf.range(self.B, dtype=tf.int64), b, self.Q)
        inv_t = 1.0 / temps[:, None]
        hist = tf.unstack(last, num=self.B, axis=1)
        forced_cols = tf.unstack(forced, num=self.B, axis=1)
        mask_cols = tf.unstack(force_mask, num=self.B)
        new_states = list(states)
        codes, logits_out = [], []
        last_tier = len(self.frame_sizes) - 1

        def sample(cond):
            i = len(codes)
            logits = self.mlp_logits(p, tf.stack(hist[-self.F:], axis=1), cond)
            code = tf.argmax(logits * inv_t + noise[:, i], axis=-1, output_type=tf.int32)
            code = tf.where(mask_cols[i], forced_cols[i], code)
            hist.append(code)
            codes.append(code)
            if want_logits:
                logits_out.append(logits)

        def run_tier(k, cond):
            f = self.frame_sizes[k]
            up, new_states[k] = self.tier_step(k, p, tf.stack(hist[-f:], axis=1), cond, new_states[k])
            for r in range(self.ratios[k]):
                c = up[:, r]
                if k == last_tier:
                    sample(c)
                else:
                    run_tier(k + 1, c)

        run_tier(0, None)
        logits = tf.stack(logits_out, axis=1) if want_logits else None
        return tf.stack(codes, axis=1), tuple(new_states), logits

    def frames_loop(self, p, states, last, pos, n, size, key, temps, forced, force_mask,
                    want_logits=False):
        """Generates n top frames in a tf.while_loop into buffers of `size` (>= n) frames.

        Args:
          as `frame_body`; `pos` is the position of the first frame's first target, and the
          force mask applies to the first frame only. n: int32 scalar >= 0; size: int32 >= n
          (a Python int inside XLA, where buffers need a static size).

        Returns:
          (codes int32 [size, b, B], new states, new last [b, B], logits [size, b, B, Q] or None);
          frames >= n of the buffers are unspecified.
        """
        shape = tf.TensorShape([None, self.B])
        ta = tf.TensorArray(tf.int32, size=size, element_shape=shape)
        lta = tf.TensorArray(tf.float32, size=size if want_logits else 0,
                             element_shape=shape.concatenate([self.Q]))
        no_force = tf.zeros([self.B], tf.bool)

        def body(i, states, last, mask, ta, lta):
            codes, states, logits = self.frame_body(p, states, last, pos + tf.cast(i, tf.int64) * self.B,
                                                    key, temps, forced, mask, want_logits)
            if want_logits:
                lta = lta.write(i, logits)
            return i + 1, states, codes, no_force, ta.write(i, codes), lta

        _, states, last, _, ta, lta = tf.while_loop(
            lambda i, *_: i < n, body, (tf.constant(0), states, last, force_mask, ta, lta),
            parallel_iterations=1, maximum_iterations=size if isinstance(size, int) else None)
        return ta.stack(), states, last, (lta.stack() if want_logits else None)

    def frame_block(self, p, states, last, pos, n, key, temps, forced, force_mask, want_logits):
        """Up to K = `frames_per_call` frames: what one XLA launch computes."""
        return self.frames_loop(p, states, last, pos, n, self.frames_per_call, key, temps, forced,
                                force_mask, want_logits)

    def _run_xla(self, p, states, last, pos, num_frames, temps, key, forced, force_mask,
                 want_logits):
        """A loop over XLA launches of K = `frames_per_call` frames (the last one shorter)."""
        K = self.frames_per_call
        b = tf.shape(last)[0]
        blocks = (num_frames + K - 1) // K
        ta = tf.TensorArray(tf.int32, size=blocks, element_shape=tf.TensorShape([K, None, self.B]))
        lta = tf.TensorArray(tf.float32, size=blocks if want_logits else 0,
                             element_shape=tf.TensorShape([K, None, self.B, self.Q]))
        no_force = tf.zeros([self.B], tf.bool)

        def body(j, states, last, mask, ta, lta):
            n = tf.minimum(K, num_frames - j * K)
            codes, states, last, logits = self._block_jit(
                p, states, last, pos + tf.cast(j * K, tf.int64) * self.B, n, key, temps, forced,
                mask, want_logits)
            if want_logits:
                lta = lta.write(j, logits)
            return j + 1, states, last, no_force, ta.write(j, codes), lta

        _, states, last, _, ta, lta = tf.while_loop(
            lambda j, *_: j < blocks, body, (tf.constant(0), states, last, force_mask, ta, lta),
            parallel_iterations=1)
        out = (tf.reshape(ta.stack(), [blocks * K, b, self.B])[:num_frames], states, last)
        if want_logits:
            out += (tf.reshape(lta.stack(), [blocks * K, b, self.B, self.Q])[:num_frames],)
        return out

    def _run_graph(self, p, states, last, pos, num_frames, temps, key, forced, force_mask,
                   want_logits):
        """One plain tf.while_loop over all frames."""
        frames, states, last, logits = self.frames_loop(
            p, states, last, pos, num_frames, num_frames, key, temps, forced, force_mask,
            want_logits)
        return (frames, states, last) + ((logits,) if want_logits else ())

    def run_frames(self, p, states, last, pos, num_frames, temps, key, forced, force_mask,
                   want_logits=False):
        """Generates `num_frames` top frames, with or without XLA (see `jit`).

        Args:
          as `frames_loop`.

        Returns:
          (codes int32 [b, num_frames*B], new states, new last [b, B], logits [b, n*B, Q] or None).
        """
        b = tf.shape(last)[0]
        args = (p, states, last, pos, num_frames, temps, key, forced, force_mask, want_logits)
        if self.jit is None and self.D > AUTO_JIT_MAX_DIM:
            # Large dims: XLA's matrix-vector products are faster for a few rows, the TF
            # kernels for many. Both paths draw the same codes, so this is speed only.
            out = tf.cond(b <= AUTO_JIT_MAX_BATCH, lambda: self._run_xla(*args),
                          lambda: self._run_graph(*args))
        elif self.jit is False:
            out = self._run_graph(*args)
        else:
            out = self._run_xla(*args)
        frames, states, last = out[:3]
        codes = tf.reshape(tf.transpose(frames, [1, 0, 2]), [b, num_frames * self.B])
        logits = None
        if want_logits:
            logits = tf.reshape(tf.transpose(out[3], [1, 0, 2, 3]), [b, -1, self.Q])
        return codes, states, last, logits

    # -- starting points ---------------------------------------------------------------------

    def start(self, batch_size):
        """Unprimed start: (states, last, forced, force_mask, num_forced) for `batch_size` rows."""
        states = self.model.initial_states(batch_size)
        last = tf.fill(tf.stack([batch_size, self.B]), self.pad_code)
        return states, last, tf.zeros_like(last), tf.zeros([self.B], tf.bool), tf.constant(0)

    def quantize_audio(self, audio):
        """float32 [b, T] -> int32 codes [b, T], each row treated as `pipelines.dataset.load_corpus`
        treats a decoded file: normalized, then `pipelines.dataset.quantize_audio`."""
        from pipelines import audio as audio_lib
        from pipelines import dataset as dataset_lib
        d = self.config.data
        x = tf.map_fn(lambda row: audio_lib.normalize(row, d.normalize, d.remove_dc), audio,
                      fn_output_signature=tf.float32)
        return dataset_lib.quantize_audio(x, self.config)

    def check_audio(self, audio, what: str, min_length: int):
        """Graph-time checks of float32 [b, T] audio. Returns `audio` with the checks attached."""
        checks = [
            tf.debugging.assert_rank(audio, 2, message=f"{what} must be float32 [batch, time]"),
            tf.debugging.Assert(tf.shape(audio)[1] >= min_length, [
                f"{what} must have at least {min_length} samples (one top frame) at "
                f"{self.config.data.sample_rate} Hz; got", tf.shape(audio)[1]]),
            tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(audio)),
                                [f"{what} has non-finite values (NaN or Inf)"]),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(audio)

    def _tiers_over(self, stream, start, length, states):
        """Runs the frame tiers (teacher-forced, no MLP) over targets stream[:, start+B : +length].

        `length` is a multiple of B (static or dynamic). Returns the new states.
        """
        new_states, cond = [], None
        for k, (tier, f) in enumerate(zip(self.model.tiers, self.frame_sizes)):
            span = stream[:, start + self.B - f: start + self.B - f + length]
            codes = tf.reshape(span, tf.stack([tf.shape(stream)[0], length // f, f]))
            # As SampleRNN.forward does, window by window (the MLP is not needed for the state).
            cond, s = tier.run_time_major(tf.transpose(codes, [1, 0, 2]), cond, states[k])
            new_states.append(s)
        return tuple(new_states)

    def prime(self, audio, batch_size):
        """Warms the state up on a prime clip (teacher forcing through every tier).

        Args:
          audio: float32 [1 or b, T] at the model rate, T >= B; a single row is repeated.
          batch_size: b.

        Returns:
          (states, last, forced, force_mask, num_forced k): the state after the T // B whole
          top frames of the prime; its last k = T mod B codes are forced in the first frame.
        """
        audio = self.check_audio(audio, "prime", self.B)
        rows = tf.shape(audio)[0]
        with tf.control_dependencies([tf.debugging.Assert(
                (rows == 1) | (rows == batch_size),
                ["prime must have 1 row or batch_size rows; got rows, batch_size:", rows, batch_size])]):
            audio = tf.cond(rows == 1, lambda: tf.tile(audio, tf.stack([batch_size, 1])),
                            lambda: tf.identity(audio))
        codes = self.quantize_audio(audio)
        t = tf.shape(codes)[1]
        B, L = self.B, self.config.data.seq_len
        whole = (t // B) * B
        k = t - whole
        stream = tf.concat([tf.fill(tf.stack([batch_size, B]), self.pad_code), codes], axis=1)
        states = self.model.initial_states(batch_size)
        # Training's windows: full windows of L targets, state carried; then the remainder.
        n_full = whole // L

        def window(w, states):
            return w + 1, self._tiers_over(stream, w * L, L, states)
        _, states = tf.while_loop(lambda w, _: w < n_full, window, (tf.constant(0), states),
                                  parallel_iterations=1)
        rest = whole - n_full * L
        states = tf.cond(rest > 0, lambda: self._tiers_over(stream, n_full * L, rest, states),
                         lambda: states)
        last = stream[:, whole: whole + B]            # the input of the partial/next top frame
        tail = tf.pad(codes[:, whole:], [[0, 0], [0, B - k]], constant_values=self.pad_code)
        force_mask = tf.range(B) < k
        return states, last, tf.reshape(tail, [batch_size, B]), force_mask, k

    # -- whole calls -------------------------------------------------------------------------

    def check_request(self, num_samples, temperature):
        return [
            tf.debugging.Assert(num_samples > 0, ["num_samples must be positive; got", num_samples]),
            tf.debugging.Assert(tf.reduce_all(temperature > 0),
                                ["temperature must be > 0; got", temperature]),
        ]

    def generate(self, num_samples, batch_size, temperature, seed, prime=None, want_logits=False):
        """The whole generation in one graph.

        Args:
          num_samples: int32 scalar > 0. batch_size: int32 scalar > 0.
          temperature: float32 scalar or [batch_size], > 0. seed: int64 scalar.
          prime: optional float32 [1 or b, T] audio at the model rate.

        Returns:
          dict: 'audio' float32 [b, N], 'codes' int32 [b, N] (and 'logits' [b, N, Q]).
        """
        num_samples = tf.cast(num_samples, tf.int32)
        batch_size = tf.cast(batch_size, tf.int32)
        temperature = tf.cast(temperature, tf.float32)
        with tf.control_dependencies(self.check_request(num_samples, temperature) + [
                tf.debugging.Assert(batch_size > 0, ["batch_size must be positive; got", batch_size])]):
            # Everything downstream depends on the checks, so a bad request fails on them first.
            num_samples = tf.identity(num_samples)
            batch_size = tf.identity(batch_size)
            temps = tf.broadcast_to(temperature, tf.reshape(batch_size, [1]))
        if prime is None:
            states, last, forced, mask, k = self.start(batch_size)
        else:
            states, last, forced, mask, k = self.prime(prime, batch_size)
        num_frames = (k + num_samples + self.B - 1) // self.B
        codes, _, _, logits = self.run_frames(
            self.params(), states, last, tf.constant(0, tf.int64), num_frames, temps,
            seed_key(seed), forced, mask, want_logits)
        codes = codes[:, k:k + num_samples]
        out = {"audio": quantization.decode(codes, self.config.data.q_type, self.Q), "codes": codes}
        if want_logits:
            out["logits"] = logits[:, k:k + num_samples]
        return out

    def continue_frames(self, states, last, pos, num_frames, temps, seed, forced, force_mask):
        """`run_frames` with its own weight precomputation: one chunk of a stream."""
        return self.run_frames(self.params(), states, last, pos, num_frames, temps,
                               seed_key(seed), forced, force_mask)[:3]

    def score(self, audio):
        """NLL in bits per sample of each row, as `samplernn_tf.evaluate` computes it for a file.

        Each row is one file: normalized, quantized, front-padded with B silence samples and
        back-padded to whole windows of seq_len (padding weighted 0), state carried across
        windows from the initial state.

        Args:
          audio: float32 [b, T] at the model rate, T >= 1.

        Returns:
          float32 [b].
        """
        audio = self.check_audio(audio, "audio", 1)
        codes = self.quantize_audio(audio)
        b, t = tf.shape(codes)[0], tf.shape(codes)[1]
        B, L = self.B, self.config.data.seq_len
        n = (t + L - 1) // L
        total = n * L
        stream = tf.concat([tf.fill(tf.stack([b, B]), self.pad_code), codes,
                            tf.fill(tf.stack([b, total - t]), self.pad_code)], axis=1)
        weights = tf.cast(tf.range(total) < t, tf.float32)
        from pipelines.windows import tbptt_windows

        def window(w, states, acc):
            win = stream[:, w * L: w * L + L + B]
            parts = tbptt_windows(tf.reshape(win, tf.stack([b, L + B])), L, self.frame_sizes)
            inputs = {"tier_inputs": tuple(x[:, 0] for x in parts["tier_inputs"]),
                      "sample_inputs": parts["sample_inputs"][:, 0]}
            logits, states = self.model.forward(inputs, states, training=False)
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=parts["targets"][:, 0], logits=tf.cast(logits, tf.float32))
            return w + 1, states, acc + tf.reduce_sum(nll * weights[w * L: w * L + L], axis=1)

        _, _, acc = tf.while_loop(lambda w, *_: w < n, window,
                                  (tf.constant(0), self.model.initial_states(b), tf.zeros([b])),
                                  parallel_iterations=1)
        return acc / tf.cast(t, tf.float32) / math.log(2.0)
