"""Building blocks: weight-normalized dense layers and hand-written GRU / LSTM recurrences.

Why hand-written: Keras's generic RNN loop runs a Python-level cell per step and lets autodiff
differentiate the `while_loop`, which on a CPU means a stack push/pop per intermediate and a
small weight-gradient matmul accumulated at every step. Here the input projection of all steps
is one matmul, the forward loop does only `h @ U` and the gate arithmetic, and the backward pass
(a `tf.custom_gradient`) recomputes the gates of all steps with one large matmul, runs a
reverse loop that does only `dG @ U^T`, and gets `dU` from one large matmul at the end.

Dtypes: variables are float32; matmuls run in the layer's `compute_dtype` (bfloat16 / float16
for mixed precision); the gate arithmetic and the RNN state are always float32.
Sub-layers are invoked through `.call()` / explicit methods by their owners so that Keras's
input autocasting (to the float32 variable policy) never undoes the compute dtype.
"""

from __future__ import annotations

import importlib

import keras
import tensorflow as tf

# Keras's TF-backend RNN module (its package re-exports a function of the same name): the
# cuDNN GRU used on GPUs.
keras_tf_rnn = importlib.import_module("keras.src.backend.tensorflow.rnn")

_DTYPES = {"float32": tf.float32, "bf16": tf.bfloat16, "bfloat16": tf.bfloat16,
           "fp16": tf.float16, "float16": tf.float16}


def as_compute_dtype(name) -> tf.DType:
    """Maps 'float32' / 'bf16' / 'bfloat16' / 'fp16' / 'float16' (or a tf.DType) to a tf.DType."""
    if isinstance(name, tf.DType):
        return name
    if name not in _DTYPES:
        raise ValueError(f"unknown compute dtype {name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _matmul_nd(x, w):
    """x [..., k] @ w [k, n] -> [..., n], as one 2-D MatMul (cheaper than BatchMatMul on CPU)."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), w)
    return tf.reshape(y, tf.concat([shape[:-1], [w.shape[-1]]], 0))


def _initializer(kind: str):
    return {"he": keras.initializers.HeUniform(), "glorot": keras.initializers.GlorotUniform(),
            "orthogonal": keras.initializers.Orthogonal()}[kind]


class WeightNormKernel(keras.layers.Layer):
    """A [in_dim, units] kernel, optionally weight-normalized: W = g * v / ||v|| per output unit.

    `g` starts at the column norms of `v`, so the initial W equals the initial v.
    """

    def __init__(self, in_dim: int, units: int, *, weight_norm: bool, init: str = "he",
                 blocks: int = 1, init_scale: float = 1.0, name=None):
        super().__init__(name=name)

        def init_fn(shape, dtype=None):
            # Per gate block (each gate's recurrent matrix orthogonal on its own), with a fresh
            # initializer per block: an unseeded Keras 3 initializer repeats its values.
            per = units // blocks
            w = tf.concat([_initializer(init)((shape[0], per), dtype) for _ in range(blocks)], 1)
            return w * init_scale
        self.v = self.add_weight(shape=(in_dim, units), initializer=init_fn, name="v")
        self.weight_norm = weight_norm
        if weight_norm:
            self.g = self.add_weight(shape=(units,), initializer=lambda shape, dtype=None: tf.norm(
                tf.convert_to_tensor(self.v), axis=0), name="g")
        self.built = True

    def value(self):
        """The effective kernel, float32 [in_dim, units]."""
        v = tf.convert_to_tensor(self.v)
        if not self.weight_norm:
            return v
        return v * (tf.convert_to_tensor(self.g) * tf.math.rsqrt(tf.reduce_sum(tf.square(v), 0) + 1e-12))


class Dense(keras.layers.Layer):
    """Affine map with an optional weight-normalized kernel.

    Args:
      in_dim, units: kernel shape [in_dim, units].
      use_bias: add a bias (float32 variable, cast to the compute dtype).
      weight_norm: weight-normalize the kernel.
      init: 'he', 'glorot' or 'orthogonal' for the kernel direction.
      init_scale: factor on the initial kernel.
      bias_init: initializer of the bias (default zeros).
      compute_dtype: dtype of the matmul and of the output.
    """

    def __init__(self, in_dim: int, units: int, *, use_bias: bool = True, weight_norm: bool = True,
                 init: str = "he", init_scale: float = 1.0, bias_init="zeros",
                 compute_dtype="float32", name=None):
        super().__init__(name=name)
        self.in_dim, self.units = in_dim, units
        self.cdtype = as_compute_dtype(compute_dtype)
        self.kernel = WeightNormKernel(in_dim, units, weight_norm=weight_norm, init=init,
                                       init_scale=init_scale, name="kernel")
        self.bias = self.add_weight(shape=(units,), initializer=bias_init, name="bias") if use_bias else None
        self.built = True

    def params(self):
        """(kernel [in_dim, units], bias [units] or None) in the compute dtype, weight norm applied.

        Compute once and pass to `call(params=...)` to keep weight normalization out of a loop.
        """
        bias = None if self.bias is None else tf.cast(self.bias, self.cdtype)
        return tf.cast(self.kernel.value(), self.cdtype), bias

    def call(self, x, relu=False, params=None):
        """x: [..., in_dim] -> [..., units] in the compute dtype, ReLU applied if `relu`.

        `params`: optional precomputed `self.params()`.
        """
        kernel, bias = self.params() if params is None else params
        x = tf.cast(x, self.cdtype)
        shape, rank = tf.shape(x), x.shape.rank
        if rank != 2:
            x = tf.reshape(x, [-1, self.in_dim])
        # MatMul -> BiasAdd -> Relu adjacent (no Reshape between), so that grappler fuses them
        # into one oneDNN call; unfused bfloat16 elementwise ops are slow on CPU.
        y = tf.matmul(x, kernel)
        if bias is not None:
            y = tf.nn.bias_add(y, bias)
        if relu:
            y = tf.nn.relu(y)
        if rank != 2:
            y = tf.reshape(y, tf.concat([shape[:-1], [self.units]], 0))
        return y


def gather_sum(table, codes):
    """sum_j table[j, codes[..., j]]: the sample MLP's embedding + first linear layer.

    Args:
      table: [F, Q, D] float.
      codes: int32 [..., F].

    Returns:
      [..., D] in the table's dtype.
    """
    f, q, d = table.shape
    lead = tf.shape(codes)[:-1]
    flat = tf.reshape(codes, [-1, f])

    # F gathers + add_n, and F segment sums for the gradient: 2-4x faster on CPU than one
    # gather of [N, F, D] and its IndexedSlices -> dense conversion.
    @tf.custom_gradient
    def run(table):
        out = tf.add_n([tf.gather(table[j], flat[:, j]) for j in range(f)])

        def grad(dy):
            dy = tf.cast(dy, tf.float32)  # accumulate in float32 whatever the compute dtype
            return tf.cast(tf.stack([tf.math.unsorted_segment_sum(dy, flat[:, j], q)
                                     for j in range(f)]), table.dtype)
        return out, grad

    return tf.reshape(run(table), tf.concat([lead, [d]], 0))


# ----------------------------------------------------------------------------------------------
# Recurrences. Time-major: xp [T, B, G*D] is the input projection (input bias included).
# GRU gate order (r, z, n), reset-after (cuDNN): n = tanh(x_n + r * (h @ U_n + b_n)).
# LSTM gate order (i, f, o, g), so one sigmoid covers the first 3*D columns.

def _rmatmul(h, u):
    """h [B, k] float32 @ u [k, n] (any float dtype) -> float32."""
    return tf.cast(tf.matmul(tf.cast(h, u.dtype), u), tf.float32)


def gru_cell(xp, h, u, b):
    """One GRU step. xp [B, 3D] f32, h [B, D] f32, u [D, 3D], b [3D] f32 -> new h [B, D] f32."""
    d = h.shape[-1]
    x_rz, x_n = tf.split(xp, [2 * d, d], axis=-1)
    hu_rz, hu_n = tf.split(tf.nn.bias_add(_rmatmul(h, u), b), [2 * d, d], axis=-1)
    r, z = tf.split(tf.sigmoid(x_rz + hu_rz), 2, axis=-1)
    n = tf.tanh(x_n + r * hu_n)
    return n + z * (h - n)


def lstm_cell(xp, h, c, u):
    """One LSTM step. xp [B, 4D] f32 (bias included), h, c [B, D] f32, u [D, 4D] -> (h, c)."""
    d = h.shape[-1]
    gates = xp + _rmatmul(h, u)
    i, f, o = tf.split(tf.sigmoid(gates[:, :3 * d]), 3, axis=-1)
    c = f * c + i * tf.tanh(gates[:, 3 * d:])
    return o * tf.tanh(c), c


def _shift_in(first, seq):
    """[B, D], [T, B, D] -> [T, B, D]: the value before each step (first, seq[0], ..., seq[T-2])."""
    return tf.concat([first[None], seq[:-1]], axis=0)


def _dot_all(x, u):
    """x [T, B, D] f32 @ u -> f32 [T, B, G*D]: all steps' recurrent products in one matmul."""
    return tf.cast(_matmul_nd(tf.cast(x, u.dtype), u), tf.float32)


def _weight_grad(x, dy, dtype):
    """sum over steps and rows of x^T dy: x [T, B, D], dy [T, B, G*D] -> [D, G*D] in `dtype`."""
    x2 = tf.cast(tf.reshape(x, [-1, x.shape[-1]]), dtype)
    dy2 = tf.cast(tf.reshape(dy, [-1, dy.shape[-1]]), dtype)
    return tf.matmul(x2, dy2, transpose_a=True)


def _time_loop(n, body, init, reverse=False):
    """Runs `body(t, *carry) -> carry` for t = 0..n-1 (or n-1..0)."""
    def cond(k, *_):
        return k < n
    def step(k, *carry):  # noqa: E306
        t = n - 1 - k if reverse else k
        return (k + 1,) + tuple(body(t, *carry))
    return tf.while_loop(cond, step, (tf.constant(0),) + tuple(init),
                         parallel_iterations=1)[1:]


def _gru_forward_loop(xp, h0, u, b):
    n = tf.shape(xp)[0]
    ta = tf.TensorArray(tf.float32, size=n, element_shape=h0.shape)

    def body(t, h, ta):
        h = gru_cell(xp[t], h, u, b)
        return h, ta.write(t, h)
    _, ta = _time_loop(n, body, (h0, ta))
    return ta.stack()


def _gru_backward_loop(dhs, k_hh, z, ut):
    """Reverse loop: only dh_{t-1} = dh_t * z_t + (dh_t * k_hh_t) @ U^T per step."""
    n = tf.shape(dhs)[0]
    ta = tf.TensorArray(tf.float32, size=n, element_shape=dhs.shape[1:])

    def back(t, carry, ta):
        dh = carry + dhs[t]
        carry = dh * z[t] + _rmatmul(tf.tile(dh, [1, 3]) * k_hh[t], ut)
        return carry, ta.write(t, dh)
    dh0, ta = _time_loop(n, back, (tf.zeros_like(dhs[0]), ta), reverse=True)
    return ta.stack(), dh0


def gru_sequence(xp, h0, u, b):
    """GRU over a whole window with a hand-written backward pass.

    Args:
      xp: float32 [T, B, 3D], input projections of all steps (input bias included).
      h0: float32 [B, D], state before the first step.
      u: [D, 3D] recurrent kernel in the matmul dtype.
      b: float32 [3D], recurrent bias (reset-after).

    Returns:
      float32 [T, B, D], the state after each step (the last one is the new state).
    """

    @tf.custom_gradient
    def run(xp, h0, u, b):
        hs = _gru_forward_loop(xp, h0, u, b)

        def grad(dhs):
            d = h0.shape[-1]
            hprev = _shift_in(h0, hs)
            x_rz, x_n = tf.split(xp, [2 * d, d], axis=-1)
            hu_rz, hu_n = tf.split(_dot_all(hprev, u) + b, [2 * d, d], axis=-1)
            r, z = tf.split(tf.sigmoid(x_rz + hu_rz), 2, axis=-1)
            g = tf.tanh(x_n + r * hu_n)
            # dL/d(pre-activations) = dh_t * k: precomputed for all steps, vectorized.
            k_n = (1.0 - z) * (1.0 - g * g)
            k_r = k_n * hu_n * r * (1.0 - r)
            k_z = (hprev - g) * z * (1.0 - z)
            k_hh = tf.concat([k_r, k_z, k_n * r], axis=-1)
            # U^T once: oneDNN re-packs a transpose_b operand at every call.
            dh, dh0 = _gru_backward_loop(dhs, k_hh, z, tf.transpose(u))
            dhh = tf.tile(dh, [1, 1, 3]) * k_hh
            dxp = tf.concat([dhh[..., :2 * d], dh * k_n], axis=-1)
            return dxp, dh0, _weight_grad(hprev, dhh, u.dtype), tf.reduce_sum(dhh, axis=[0, 1])

        return hs, grad

    return run(xp, h0, u, b)


def lstm_sequence(xp, h0, c0, u):
    """LSTM over a whole window with a hand-written backward pass.

    Args:
      xp: float32 [T, B, 4D], input projections (bias included), gate order (i, f, o, g).
      h0, c0: float32 [B, D].
      u: [D, 4D] recurrent kernel in the matmul dtype.

    Returns:
      (hs, cs): float32 [T, B, D] each, outputs and cell states after each step.
    """

    @tf.custom_gradient
    def run(xp, h0, c0, u):
        n = tf.shape(xp)[0]
        h_ta = tf.TensorArray(tf.float32, size=n, element_shape=h0.shape)
        c_ta = tf.TensorArray(tf.float32, size=n, element_shape=h0.shape)

        def body(t, h, c, h_ta, c_ta):
            h, c = lstm_cell(xp[t], h, c, u)
            return h, c, h_ta.write(t, h), c_ta.write(t, c)
        _, _, h_ta, c_ta = _time_loop(n, body, (h0, c0, h_ta, c_ta))
        hs, cs = h_ta.stack(), c_ta.stack()

        def grad(dhs, dcs):
            d = h0.shape[-1]
            dhs = tf.zeros_like(hs) if dhs is None else dhs
            dcs = tf.zeros_like(cs) if dcs is None else dcs
            hprev, cprev = _shift_in(h0, hs), _shift_in(c0, cs)
            gates = xp + _dot_all(hprev, u)
            i, f, o = tf.split(tf.sigmoid(gates[..., :3 * d]), 3, axis=-1)
            g = tf.tanh(gates[..., 3 * d:])
            tc = tf.tanh(cs)
            k_c = o * (1.0 - tc * tc)
            k = tf.concat([g * i * (1.0 - i), cprev * f * (1.0 - f), tc * o * (1.0 - o),
                           i * (1.0 - g * g)], axis=-1)
            dg_ta = tf.TensorArray(tf.float32, size=n, element_shape=xp.shape[1:])

            ut = tf.transpose(u)  # see gru_sequence

            def back(t, carry_h, carry_c, dg_ta):
                dh = carry_h + dhs[t]
                dc = carry_c + dcs[t] + dh * k_c[t]
                dg = tf.concat([dc, dc, dh, dc], axis=-1) * k[t]
                carry_h = _rmatmul(dg, ut)
                return carry_h, dc * f[t], dg_ta.write(t, dg)
            zeros = tf.zeros_like(h0)
            dh0, dc0, dg_ta = _time_loop(n, back, (zeros, zeros, dg_ta), reverse=True)
            dg = dg_ta.stack()
            return dg, dh0, dc0, _weight_grad(hprev, dg, u.dtype)

        return (hs, cs), grad

    return run(xp, h0, c0, u)


class RNN(keras.layers.Layer):
    """One recurrent layer: input projection, GRU (reset-after) or LSTM recurrence, initial state.

    State of one layer: a tuple of float32 [B, D] tensors, `(h,)` for GRU, `(h, c)` for LSTM.

    Args:
      in_dim: input width. dim: D.
      rnn_type: 'gru' or 'lstm'.
      weight_norm: weight-normalize the input and recurrent kernels.
      learn_h0: learn the initial state (else zeros).
      lstm_forget_bias: initial forget-gate bias.
      compute_dtype: matmul dtype of the input projection.
      recurrent_dtype: matmul dtype of `h @ U` inside the loop (float32 unless stated).
    """

    def __init__(self, in_dim: int, dim: int, *, rnn_type: str = "gru", weight_norm: bool = True,
                 learn_h0: bool = True, lstm_forget_bias: float = 3.0, compute_dtype="float32",
                 recurrent_dtype="float32", name=None):
        super().__init__(name=name)
        self.dim, self.rnn_type = dim, rnn_type
        gates = 3 if rnn_type == "gru" else 4
        bias_init = "zeros"
        if rnn_type == "lstm":
            bias_init = lambda shape, dtype=None: tf.concat(  # noqa: E731
                [tf.zeros([dim]), tf.fill([dim], float(lstm_forget_bias)), tf.zeros([2 * dim])], 0)
        self.input_proj = Dense(in_dim, gates * dim, weight_norm=weight_norm, init="glorot",
                                bias_init=bias_init, compute_dtype=compute_dtype, name="input")
        self.recurrent = WeightNormKernel(dim, gates * dim, weight_norm=weight_norm,
                                          init="orthogonal", blocks=gates, name="recurrent")
        self.recurrent_bias = (self.add_weight(shape=(gates * dim,), initializer="zeros",
                                               name="recurrent_bias") if rnn_type == "gru" else None)
        self.num_states = 1 if rnn_type == "gru" else 2
        self.h0 = (self.add_weight(shape=(self.num_states, dim), initializer="zeros", name="h0")
                   if learn_h0 else None)
        self.rdtype = as_compute_dtype(recurrent_dtype)
        self.built = True

    def initial_state(self, batch_size):
        """Learned (or zero) initial state broadcast to `batch_size` rows: tuple of [B, D] f32."""
        h0 = tf.zeros([self.num_states, self.dim]) if self.h0 is None else tf.convert_to_tensor(self.h0)
        return tuple(tf.broadcast_to(h0[k], [batch_size, self.dim]) for k in range(self.num_states))

    def recurrent_kernel(self):
        """The recurrent kernel U [D, G*D] in the recurrent matmul dtype."""
        return tf.cast(self.recurrent.value(), self.rdtype)

    def params(self):
        """Effective weights for `step(params=...)`: {'input': Dense params, 'u': [D, G*D],
        'b': float32 [G*D] recurrent bias (GRU) or None}."""
        b = None if self.recurrent_bias is None else tf.convert_to_tensor(self.recurrent_bias)
        return {"input": self.input_proj.params(), "u": self.recurrent_kernel(), "b": b}

    def project(self, x, params=None):
        """Input projection: x [..., in_dim] -> float32 [..., G*D]."""
        return tf.cast(self.input_proj.call(x, params=params), tf.float32)

    def keras_gru_weights(self):
        """This GRU's effective weights in Keras's canonical GRU layout (gates [z, r, n],
        reset_after=True): (kernel [in, 3D], recurrent_kernel [D, 3D], bias [2, 3D]), float32.
        Ours are stored [r, z, n]; the cuDNN kernel reads the Keras layout."""
        def zrn(w):
            r, z, n = tf.split(tf.cast(w, tf.float32), 3, axis=-1)
            return tf.concat([z, r, n], axis=-1)
        kernel, in_bias = self.input_proj.params()
        in_bias = tf.zeros([3 * self.dim]) if in_bias is None else in_bias
        bias = tf.stack([zrn(in_bias), zrn(self.recurrent_bias)])
        return zrn(kernel), zrn(self.recurrent.value()), bias

    def call(self, x, state):
        """Runs a window. x: time-major [T, B, in_dim]; state: tuple of [B, D].

        On a GPU the GRU runs on cuDNN (same weights, float32; Keras's cuDNN GRU), elsewhere on
        the hand-written recurrence below.

        Returns:
          (outputs float32 [T, B, D], new state).
        """
        if self.rnn_type == "gru" and keras_tf_rnn.cudnn_ok(
                tf.tanh, tf.sigmoid, False, True, reset_after=True):
            kernel, recurrent_kernel, bias = self.keras_gru_weights()
            try:
                _, hs, (h,) = keras_tf_rnn.gru(
                    tf.cast(x, tf.float32), state[0], None, kernel, recurrent_kernel, bias,
                    tf.tanh, tf.sigmoid, return_sequences=True, time_major=True, reset_after=True)
                return hs, (h,)
            except NotImplementedError:  # no cuDNN kernel after all: use ours
                pass
        xp = self.project(x)
        u = self.recurrent_kernel()
        if self.rnn_type == "gru":
            hs = gru_sequence(xp, state[0], u, tf.convert_to_tensor(self.recurrent_bias))
            return hs, (hs[-1],)
        hs, cs = lstm_sequence(xp, state[0], state[1], u)
        return hs, (hs[-1], cs[-1])

    def step(self, x, state, params=None):
        """One step. x: [B, in_dim]; state: tuple of [B, D]; params: optional `self.params()`.

        Returns:
          (output float32 [B, D], new state).
        """
        params = self.params() if params is None else params
        xp = self.project(x, params["input"])
        if self.rnn_type == "gru":
            h = gru_cell(xp, state[0], params["u"], params["b"])
            return h, (h,)
        h, c = lstm_cell(xp, state[0], state[1], params["u"])
        return h, (h, c)
