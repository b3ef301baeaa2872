"""Flags shared by several binaries, and the one place that turns flags into configs.

Each `define_*` function is called from a binary's `main` module only (never on import of the
library), so tests can import everything without defining flags.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from samplernn_tf import config as config_lib

FLAGS = flags.FLAGS


def define_model_flags() -> None:
    d = config_lib.ModelConfig()
    flags.DEFINE_list("frame_sizes", [str(f) for f in d.frame_sizes],
                      "Frame size in samples of each frame tier, top tier first, comma-separated. "
                      "Each divides the one above: 8,2 = the paper's 3-tier model, 16 = 2-tier, "
                      "64,16,4 = 4-tier.")
    flags.DEFINE_integer("dim", d.dim, "Width of the RNNs and of the sample-level MLP.")
    flags.DEFINE_enum("rnn_type", d.rnn_type, config_lib.RNN_TYPES, "Frame-tier RNN cell.")
    flags.DEFINE_integer("rnn_layers", d.rnn_layers, "Stacked RNN layers per frame tier.")
    flags.DEFINE_integer("emb_size", d.emb_size, "Embedding size of each quantized input sample.")
    flags.DEFINE_integer("q_levels", d.q_levels, "Quantization levels Q (softmax size).")
    flags.DEFINE_boolean("learn_h0", d.learn_h0, "Learn the RNN initial state.")
    flags.DEFINE_boolean("weight_norm", d.weight_norm, "Weight normalization on kernels.")
    flags.DEFINE_boolean("skip_connections", d.skip_connections,
                         "Graves-style skip connections across stacked RNN layers.")
    flags.DEFINE_float("lstm_forget_bias", d.lstm_forget_bias, "Initial LSTM forget-gate bias.")
    flags.DEFINE_float("dropout", d.dropout, "Dropout on RNN outputs (training only).")


def define_data_flags() -> None:
    d = config_lib.DataConfig()
    flags.DEFINE_integer("sample_rate", d.sample_rate, "Every file is resampled to this rate (Hz).")
    flags.DEFINE_enum("q_type", d.q_type, config_lib.Q_TYPES, "Amplitude quantization.")
    flags.DEFINE_enum("normalize", d.normalize, config_lib.NORMALIZATIONS,
                      "Per-file normalization. 'peak' keeps each file's dynamics and DC; "
                      "'min-max' is what the Theano/Torch versions do (shifts DC).")
    flags.DEFINE_boolean("remove_dc", d.remove_dc, "Subtract each file's mean before normalizing.")
    flags.DEFINE_integer("seq_len", d.seq_len,
                         "Truncated-BPTT window length in samples; a multiple of the top frame size.")
    flags.DEFINE_float("chunk_seconds", d.chunk_seconds,
                       "If > 0, cut long files into chunks of this many seconds that count as files.")
    flags.DEFINE_float("valid_fraction", d.valid_fraction,
                       "Fraction of files for validation when the data dir has no valid/ folder.")
    flags.DEFINE_float("test_fraction", d.test_fraction,
                       "Fraction of files for test when the data dir has no test/ folder.")
    flags.DEFINE_integer("split_seed", d.split_seed, "Seed of the train/valid/test split by file.")
    flags.DEFINE_boolean("strict", d.strict, "Unreadable audio files are fatal instead of skipped.")


def define_train_flags() -> None:
    d = config_lib.TrainConfig()
    flags.DEFINE_integer("batch_size", d.batch_size,
                         "Global batch size: parallel audio streams, split across replicas.")
    flags.DEFINE_float("learning_rate", d.learning_rate, "Peak Adam learning rate.")
    flags.DEFINE_enum("lr_schedule", d.lr_schedule, config_lib.LR_SCHEDULES,
                      "Learning-rate schedule after warm-up (cosine decays to 0 at --max_steps).")
    flags.DEFINE_integer("warmup_steps", d.warmup_steps, "Linear learning-rate warm-up steps.")
    flags.DEFINE_float("lr_decay_rate", d.lr_decay_rate, "Exponential schedule: factor per decay period.")
    flags.DEFINE_integer("lr_decay_steps", d.lr_decay_steps, "Exponential schedule: decay period in steps.")
    flags.DEFINE_integer("max_steps", d.max_steps, "Train until this global step.")
    flags.DEFINE_enum("clip_type", d.clip_type, config_lib.CLIP_TYPES,
                      "Gradient clipping: global norm, element-wise value, or none.")
    flags.DEFINE_float("clip_value", d.clip_value, "Bound for --clip_type.")
    flags.DEFINE_integer("checkpoint_every", d.checkpoint_every,
                         "Save a checkpoint every N steps (one is always saved at exit).")
    flags.DEFINE_integer("valid_every", d.valid_every, "Validate every N steps (0 = never).")
    flags.DEFINE_integer("log_every", d.log_every, "Progress line and train scalars every N steps.")
    flags.DEFINE_integer("audio_every", d.audio_every, "Generated audio summary every N steps (0 = never).")
    flags.DEFINE_float("audio_seconds", d.audio_seconds, "Length of the generated audio summaries.")
    flags.DEFINE_integer("keep_checkpoints", d.keep_checkpoints, "Recent checkpoints to keep.")
    flags.DEFINE_integer("early_stopping", d.early_stopping,
                         "Stop after this many validations without improvement (0 = never).")
    flags.DEFINE_integer("seed", d.seed, "Seed for data order, initialization and sampling.")
    flags.DEFINE_enum("mixed_precision", d.mixed_precision, config_lib.PRECISIONS,
                      "Compute precision; bf16 runs on CPU too. Softmax, loss and RNN state stay float32.")
    flags.DEFINE_integer("max_nonfinite_steps", d.max_nonfinite_steps,
                         "Steps with a non-finite loss or gradients are skipped (weights unchanged); "
                         "training stops after this many in a row.")


def _ints(name: str, values) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise config_lib.ConfigError(f"--{name}: expected comma-separated integers, got {','.join(values)!r}")


def model_config_from_flags() -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        frame_sizes=_ints("frame_sizes", FLAGS.frame_sizes), dim=FLAGS.dim,
        rnn_type=FLAGS.rnn_type, rnn_layers=FLAGS.rnn_layers, emb_size=FLAGS.emb_size,
        q_levels=FLAGS.q_levels, learn_h0=FLAGS.learn_h0, weight_norm=FLAGS.weight_norm,
        skip_connections=FLAGS.skip_connections, lstm_forget_bias=FLAGS.lstm_forget_bias,
        dropout=FLAGS.dropout)


def data_config_from_flags() -> config_lib.DataConfig:
    return config_lib.DataConfig(
        sample_rate=FLAGS.sample_rate, q_type=FLAGS.q_type, normalize=FLAGS.normalize,
        remove_dc=FLAGS.remove_dc, seq_len=FLAGS.seq_len, chunk_seconds=FLAGS.chunk_seconds,
        valid_fraction=FLAGS.valid_fraction, test_fraction=FLAGS.test_fraction,
        split_seed=FLAGS.split_seed, strict=FLAGS.strict)


def train_config_from_flags() -> config_lib.TrainConfig:
    names = [f.name for f in dataclasses.fields(config_lib.TrainConfig)]
    return config_lib.TrainConfig(**{n: getattr(FLAGS, n) for n in names})


def config_from_flags() -> config_lib.Config:
    """The full Config from parsed flags. Raises ConfigError naming the offending flag."""
    return config_lib.Config(model=model_config_from_flags(), data=data_config_from_flags(),
                             train=train_config_from_flags())
