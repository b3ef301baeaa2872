"""The SampleRNN model: N frame tiers (RNN + learned upsampling) and the sample-level MLP.

Shapes: B batch rows, L = seq_len, Q = q_levels, D = dim, f a tier's frame size, F the bottom
frame size, T_f = L / f the steps of that tier in a window.

State structure (`states`): a tuple over frame tiers (top first) of tuples over RNN layers of
tuples of float32 [B, D] tensors: `(h,)` per GRU layer, `(h, c)` per LSTM layer. So
`states[tier][layer][k]`; `tf.nest` works on it.

Two ways to run the same weights:
  * `model(batch, training)`: stateful. The state lives in non-trainable tf.Variables of a fixed
    batch size, kept out of `model.weights` and out of checkpoints, so a checkpoint restores into
    a model of any batch size.
  * `model.forward(inputs, states, training)`: stateless, explicit state, touches no variable
    other than the weights. Evaluation, generation and serving use this (or the per-tier `step`
    and `SampleMLP.logits` methods), never the training state.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from samplernn_tf.config import ModelConfig
from samplernn_tf.layers import RNN, Dense, WeightNormKernel, as_compute_dtype, gather_sum
from samplernn_tf.quantization import frame_tier_input

# Initial scale of the output layer's kernel: logits start with std ~0.5 instead of ~1.6, so that
# training starts near the uniform log2(Q) bits rather than 1-2 bits above it.
LOGITS_INIT_SCALE = 0.3


class FrameTier(keras.layers.Layer):
    """A frame-level tier: codes -> [-2, 2] -> linear f->D (+ conditioning) -> RNNs -> upsampling.

    Args:
      frame_size: f, samples per frame (= per step).
      ratio: conditioning vectors produced per step (f / next tier's f, or F for the lowest).
      config: the ModelConfig.
      has_conditioning: whether a tier above conditions this one.
      compute_dtype: matmul dtype.
    """

    def __init__(self, frame_size: int, ratio: int, config: ModelConfig, *, has_conditioning: bool,
                 compute_dtype="float32", name=None):
        super().__init__(name=name)
        self.frame_size, self.ratio, self.dim = frame_size, ratio, config.dim
        self.q_levels, self.dropout = config.q_levels, config.dropout
        self.skip, self.has_conditioning = config.skip_connections, has_conditioning
        self.cdtype = as_compute_dtype(compute_dtype)
        d = config.dim
        self.expand = Dense(frame_size, d, weight_norm=config.weight_norm, init="he",
                            compute_dtype=compute_dtype, name="expand")
        rnns = []
        for k in range(config.rnn_layers):
            rnn = RNN(d if (k == 0 or not self.skip) else 2 * d, d, rnn_type=config.rnn_type,
                      weight_norm=config.weight_norm, learn_h0=config.learn_h0,
                      lstm_forget_bias=config.lstm_forget_bias, compute_dtype=compute_dtype,
                      recurrent_dtype=compute_dtype, name=f"rnn{k}")
            # One attribute per layer: tf.train.Checkpoint does not see into Keras-tracked lists.
            setattr(self, f"rnn{k}", rnn)
            rnns.append(rnn)
        self.rnns = tuple(rnns)
        self.upsample = Dense(d, ratio * d, weight_norm=config.weight_norm, init="he",
                              compute_dtype=compute_dtype, name="upsample")
        self.built = True

    def initial_state(self, batch_size):
        """Tuple over RNN layers of tuples of float32 [batch_size, D]."""
        return tuple(rnn.initial_state(batch_size) for rnn in self.rnns)

    def params(self):
        """Effective weights for `step(params=...)`, computed once per generation run:
        {'expand': ..., 'rnns': tuple over layers, 'upsample': ...}."""
        return {"expand": self.expand.params(), "rnns": tuple(r.params() for r in self.rnns),
                "upsample": self.upsample.params()}

    def _rnn_input(self, codes, cond, params=None):
        x = self.expand.call(frame_tier_input(codes, self.q_levels), params=params)
        if cond is not None:
            x = x + tf.cast(cond, self.cdtype)
        return x

    def _stack(self, x, state, run, training):
        outputs, new_state, inp = [], [], x
        for k in range(len(self.rnns)):
            if k > 0:
                inp = outputs[-1] if not self.skip else tf.concat(
                    [x, tf.cast(outputs[-1], self.cdtype)], axis=-1)
            y, s = run(k, inp, state[k])
            if training and self.dropout > 0:
                y = tf.nn.dropout(y, rate=self.dropout)
            outputs.append(y)
            new_state.append(s)
        out = tf.add_n(outputs) if self.skip else outputs[-1]
        return tf.cast(out, self.cdtype), tuple(new_state)

    def run_time_major(self, codes, cond, state, training=False, batch_major_output=False):
        """Runs a window, time-major (what SampleRNN.forward uses).

        Args:
          codes: int32 [T, B, f].
          cond: [T, B, D] conditioning from the tier above, or None for the top tier.
          state: this tier's state (tuple over layers).
          training: dropout on.
          batch_major_output: return [B, T*ratio, D] instead of [T*ratio, B, D].

        Returns:
          (conditioning for the tier below in the compute dtype, new state).
        """
        x = self._rnn_input(codes, cond)
        out, new_state = self._stack(x, state, lambda k, i, s: self.rnns[k].call(i, s), training)
        if batch_major_output:
            out = self.upsample.call(tf.transpose(out, [1, 0, 2]))      # [B, T, r*D]
            return tf.reshape(out, [tf.shape(out)[0], -1, self.dim]), new_state
        out = self.upsample.call(out)                                    # [T, B, r*D]
        t, b = tf.shape(out)[0], tf.shape(out)[1]
        out = tf.transpose(tf.reshape(out, [t, b, self.ratio, self.dim]), [0, 2, 1, 3])
        return tf.reshape(out, [t * self.ratio, b, self.dim]), new_state

    def call(self, codes, cond, state, training=False):
        """Runs a window, batch-major.

        Args:
          codes: int32 [B, T, f]. cond: [B, T, D] or None. state: tuple over layers.

        Returns:
          (conditioning [B, T*ratio, D] in the compute dtype, new state).
        """
        cond = None if cond is None else tf.transpose(cond, [1, 0, 2])
        return self.run_time_major(tf.transpose(codes, [1, 0, 2]), cond, state, training,
                                   batch_major_output=True)

    def step(self, frame, cond, state, params=None):
        """Runs ONE frame, for autoregressive generation (dropout off).

        Args:
          frame: int32 [B, f], the f codes of the frame.
          cond: [B, D] conditioning vector for this step from the tier above, or None (top tier).
          state: this tier's state (tuple over layers of tuples of [B, D]).
          params: optional `self.params()`; pass it inside a generation loop so that weight
            normalization is not recomputed at every frame.

        Returns:
          (conditioning for the next `ratio` steps of the tier below, [B, ratio, D] in the compute
          dtype; new state).
        """
        params = self.params() if params is None else params
        x = self._rnn_input(frame, cond, params["expand"])
        out, new_state = self._stack(
            x, state, lambda k, i, s: self.rnns[k].step(i, s, params["rnns"][k]), False)
        out = self.upsample.call(out, params=params["upsample"])
        return tf.reshape(out, [-1, self.ratio, self.dim]), new_state


class SampleMLP(keras.layers.Layer):
    """Sample-level predictor: embed the F previous codes, linear (no bias) + conditioning,
    2 x (dense + ReLU), dense -> Q logits (the layer sequence of the paper's reference code).

    The embedding [Q, E] followed by the first linear [F*E, D] is computed as one lookup table
    [F, Q, D] (table[j] = Emb @ W_j, W_j the rows of position j): a gather-sum over F positions
    replaces the largest matmul, and the table is built from Emb and W inside the step so the
    gradients are exact.
    """

    def __init__(self, config: ModelConfig, compute_dtype="float32", name=None):
        super().__init__(name=name)
        self.frame_size, self.q_levels = config.bottom_frame_size, config.q_levels
        self.emb_size, self.dim = config.emb_size, config.dim
        self.cdtype = as_compute_dtype(compute_dtype)
        self.embedding = self.add_weight(shape=(config.q_levels, config.emb_size),
                                         initializer=keras.initializers.RandomNormal(stddev=1.0),
                                         name="embedding")
        self.first = WeightNormKernel(self.frame_size * config.emb_size, config.dim,
                                      weight_norm=config.weight_norm, init="he", name="first")
        wn = config.weight_norm
        # Separate attributes, not a list: tf.train.Checkpoint does not see into Keras lists.
        self.hidden0, self.hidden1 = (Dense(config.dim, config.dim, weight_norm=wn, init="he",
                                            compute_dtype=compute_dtype, name=f"hidden{k}")
                                      for k in range(2))
        self.hidden = (self.hidden0, self.hidden1)
        self.output_layer = Dense(config.dim, config.q_levels, weight_norm=wn, init="glorot",
                                  init_scale=LOGITS_INIT_SCALE, compute_dtype=compute_dtype, name="logits")
        self.built = True

    def table(self):
        """The lookup table, float32 [F, Q, D]: table[j, q] = Emb[q] @ W_j.

        Float32 whatever the compute dtype: it is small (F*Q*E*D multiply-adds per step) and
        the gather-sum then adds F float32 rows instead of rounding each to bfloat16.
        """
        w = tf.reshape(self.first.value(), [self.frame_size, self.emb_size, self.dim])
        emb = tf.convert_to_tensor(self.embedding)
        return tf.stack([tf.matmul(emb, w[j]) for j in range(self.frame_size)])

    def first_naive(self, prev_codes):
        """Reference path: embedding lookup -> concat -> matmul. [..., F] -> [..., D] (tests)."""
        e = tf.gather(tf.convert_to_tensor(self.embedding), prev_codes)           # [..., F, E]
        e = tf.reshape(e, [-1, self.frame_size * self.emb_size])
        out = tf.matmul(e, self.first.value())
        return tf.reshape(out, tf.concat([tf.shape(prev_codes)[:-1], [self.dim]], 0))

    def params(self):
        """Effective weights, computed once per generation run: {'table': float32 [F, Q, D],
        'hidden': tuple of Dense params, 'output': Dense params}."""
        return {"table": self.table(), "hidden": tuple(h.params() for h in self.hidden),
                "output": self.output_layer.params()}

    def _first_layer(self, codes, params):
        """Embedding + first linear of codes int32 [N, F] -> float32 [N, D], via the table."""
        return gather_sum(params["table"], codes)

    def call(self, prev_codes, cond, params=None):
        """Logits for every target.

        Args:
          prev_codes: int32 [..., F], the F codes before each target.
          cond: [..., D] conditioning from the lowest frame tier.
          params: optional precomputed `self.params()`.

        Returns:
          float32 logits [..., Q].
        """
        params = self.params() if params is None else params
        lead = tf.shape(prev_codes)[:-1]
        # 2-D throughout, so that every Dense is a plain fused MatMul + BiasAdd (+ Relu).
        codes = tf.reshape(prev_codes, [-1, self.frame_size])
        h = self._first_layer(codes, params)
        h = tf.cast(h + tf.cast(tf.reshape(cond, [-1, self.dim]), h.dtype), self.cdtype)
        for layer, p in zip(self.hidden, params["hidden"]):
            h = layer.call(h, relu=True, params=p)
        logits = tf.cast(self.output_layer.call(h, params=params["output"]), tf.float32)
        return tf.reshape(logits, tf.concat([lead, [self.q_levels]], 0))

    def logits(self, prev_codes, cond, params=None):
        """One sample step for generation: prev_codes int32 [B, F], cond [B, D] -> float32 [B, Q].

        Pass `params=self.params()` (which holds the [F, Q, D] table) computed once outside the
        generation loop.
        """
        return self.call(prev_codes, cond, params)


class _StateStore:
    """Holds the stateful model's RNN-state variables.

    A plain Python object on purpose: Keras and tf.train.Checkpoint track only Trackable
    attributes, so these variables stay out of `model.weights` and out of checkpoints.
    """

    def __init__(self, structure):
        # ON_READ: under a multi-replica strategy each replica keeps its own rows.
        self.variables = tf.nest.map_structure(lambda t: tf.Variable(
            t, trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, name="rnn_state"), structure)

    def read(self):
        return tf.nest.map_structure(tf.convert_to_tensor, self.variables)

    def assign(self, values):
        ops = [v.assign(x) for v, x in zip(tf.nest.flatten(self.variables), tf.nest.flatten(values))]
        return tf.group(ops)


class SampleRNN(keras.Model):
    """Stateful SampleRNN with a stateless twin (`forward`).

    Args:
      config: the ModelConfig.
      batch_size: rows of the stateful RNN state. None builds a model without state variables
        (only `forward` and the step methods then work).
      compute_dtype: 'float32', 'bf16' / 'bfloat16' or 'fp16' / 'float16': dtype of the matmuls.
        Variables, softmax, loss and RNN state stay float32.
    """

    def __init__(self, config: ModelConfig, batch_size: int | None = None,
                 compute_dtype="float32", name="samplernn"):
        super().__init__(name=name)
        self.config = config
        self.batch_size = batch_size
        self.cdtype = as_compute_dtype(compute_dtype)
        fs = config.frame_sizes
        ratios = [fs[k] // fs[k + 1] for k in range(len(fs) - 1)] + [fs[-1]]
        tiers = []
        for k, (f, r) in enumerate(zip(fs, ratios)):
            tier = FrameTier(f, r, config, has_conditioning=k > 0, compute_dtype=compute_dtype,
                             name=f"tier{k}")
            setattr(self, f"tier{k}", tier)  # checkpoint name; see FrameTier.__init__
            tiers.append(tier)
        self.tiers = tuple(tiers)
        self.sample_mlp = SampleMLP(config, compute_dtype=compute_dtype, name="sample_mlp")
        self.built = True
        self._store = None if batch_size is None else _StateStore(self.initial_states(batch_size))

    def step_params(self):
        """Effective weights of every piece for generation loops, computed once:
        {'tiers': tuple of FrameTier.params() (top first), 'sample_mlp': SampleMLP.params()}."""
        return {"tiers": tuple(t.params() for t in self.tiers),
                "sample_mlp": self.sample_mlp.params()}

    def initial_states(self, batch_size):
        """The (learned) initial state broadcast to `batch_size` rows. See the module docstring."""
        return tuple(tier.initial_state(batch_size) for tier in self.tiers)

    def apply_reset(self, states, reset):
        """Rows where `reset` (bool [B]) is True go back to the initial state; others are kept."""
        reset = tf.convert_to_tensor(reset, tf.bool)
        h0 = self.initial_states(tf.shape(reset)[0])
        return tf.nest.map_structure(lambda s, i: tf.where(reset[:, None], i, s), states, h0)

    def forward(self, inputs, states, training=False):
        """Stateless forward pass over one window.

        Args:
          inputs: dict with 'tier_inputs' (sequence over tiers, top first, of int32 [B, L/f, f])
            and 'sample_inputs' (int32 [B, L, F]). Other keys are ignored.
          states: see the module docstring.
          training: dropout on.

        Returns:
          (logits float32 [B, L, Q], new states).
        """
        cond, new_states = None, []
        last = len(self.tiers) - 1
        for k, (tier, codes, state) in enumerate(zip(self.tiers, inputs["tier_inputs"], states)):
            codes = tf.transpose(tf.convert_to_tensor(codes, tf.int32), [1, 0, 2])
            cond, s = tier.run_time_major(codes, cond, state, training, batch_major_output=k == last)
            new_states.append(s)
        logits = self.sample_mlp.call(tf.convert_to_tensor(inputs["sample_inputs"], tf.int32), cond)
        return logits, tuple(new_states)

    def _require_state(self):
        if self._store is None:
            raise ValueError("this SampleRNN was built without batch_size: it has no RNN state; "
                             "use forward(inputs, states) or build it with a batch_size")

    @property
    def state_variables(self):
        """The stateful model's RNN-state tf.Variables (same structure as `initial_states`)."""
        self._require_state()
        return self._store.variables

    def state_checkpoint(self):
        """A tf.train.Checkpoint of the RNN-state variables alone, for a training job that wants
        to resume mid-file (`tf.train.Checkpoint(model=..., rnn_state=model.state_checkpoint())`).
        Such a checkpoint only restores into a model of the same batch size. Under a
        multi-replica strategy the variables are per-replica (ON_READ) and a checkpoint holds
        replica 0's rows only.
        """
        self._require_state()
        flat = tf.nest.flatten(self._store.variables)
        return tf.train.Checkpoint(**{f"state{k}": v for k, v in enumerate(flat)})

    def get_states(self):
        """Current RNN state as tensors (same structure as `initial_states`)."""
        self._require_state()
        return self._store.read()

    def reset_states(self, mask=None):
        """Sets RNN-state rows to the initial state. mask: bool [batch_size], None = all rows."""
        self._require_state()
        if mask is None:
            return self._store.assign(self.initial_states(self.batch_size))
        return self._store.assign(self.apply_reset(self._store.read(), mask))

    def call(self, batch, training=False):
        """Stateful window: reset rows -> h0, run, keep the final state (gradients stop there).

        Args:
          batch: dict with 'tier_inputs', 'sample_inputs' and optionally 'reset' (bool [B]).
          training: dropout on.

        Returns:
          logits float32 [B, L, Q].
        """
        self._require_state()
        states = self._store.read()
        if "reset" in batch and batch["reset"] is not None:
            states = self.apply_reset(states, batch["reset"])
        logits, new_states = self.forward(batch, states, training)
        with tf.control_dependencies([self._store.assign(tf.nest.map_structure(tf.stop_gradient,
                                                                               new_states))]):
            return tf.identity(logits)
