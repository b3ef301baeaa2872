"""Typed, frozen run configuration, validated on construction and stored as `config.json`.

A run directory holds the `Config` that trained it; generation, evaluation and export read it
back with `Config.load(logdir)` instead of asking the user to repeat the flags.

Every validation error is a `ConfigError` whose message starts with the flag that sets the
offending field (`--frame_sizes: ...`), so the binaries can print it as it is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import tensorflow as tf

CONFIG_FILENAME = "config.json"

Q_TYPES = ("linear", "mu-law", "a-law")
NORMALIZATIONS = ("none", "peak", "min-max")
RNN_TYPES = ("gru", "lstm")
CLIP_TYPES = ("norm", "value", "none")
LR_SCHEDULES = ("constant", "cosine", "exponential")
PRECISIONS = ("float32", "bf16", "fp16")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the flag that sets it."""


def _require(ok: bool, flag: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"--{flag}: {message}")


def _choice(value: str, flag: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, flag, f"unknown value {value!r}; choose one of {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape of the SampleRNN model.

    Attributes:
      frame_sizes: frame size in samples of each frame tier, top tier first. Each divides the
        one above it. `(8, 2)` is the paper's 3-tier music model, `(16,)` a 2-tier model.
      dim: width of every RNN and of the sample-level MLP.
      rnn_type: 'gru' or 'lstm'.
      rnn_layers: stacked RNN layers per frame tier.
      emb_size: size of the sample-level embedding of each quantized input value.
      q_levels: number of quantization levels Q (also the softmax size).
      learn_h0: learn the RNN initial state (used at the start of every file).
      weight_norm: weight normalization on dense and RNN kernels.
      skip_connections: Graves-style skips: every RNN layer sees the tier input and the tier
        output sums all layers.
      lstm_forget_bias: initial LSTM forget-gate bias.
      dropout: dropout rate on RNN outputs, active in training only.
    """

    frame_sizes: tuple[int, ...] = (8, 2)
    dim: int = 1024
    rnn_type: str = "gru"
    rnn_layers: int = 1
    emb_size: int = 256
    q_levels: int = 256
    learn_h0: bool = True
    weight_norm: bool = True
    skip_connections: bool = False
    lstm_forget_bias: float = 3.0
    dropout: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "frame_sizes", tuple(int(f) for f in self.frame_sizes))
        fs = self.frame_sizes
        _require(len(fs) >= 1, "frame_sizes", "needs at least one frame tier, e.g. 16,4")
        _require(all(f >= 1 for f in fs), "frame_sizes", f"frame sizes must be positive, got {list(fs)}")
        for upper, lower in zip(fs, fs[1:]):
            _require(upper % lower == 0 and upper > lower, "frame_sizes",
                     f"each frame size must be a multiple of (and larger than) the one below it, top "
                     f"tier first; got {list(fs)} ({upper} vs {lower})")
        _require(self.dim >= 1, "dim", f"must be positive, got {self.dim}")
        _choice(self.rnn_type, "rnn_type", RNN_TYPES)
        _require(self.rnn_layers >= 1, "rnn_layers", f"must be >= 1, got {self.rnn_layers}")
        _require(self.emb_size >= 1, "emb_size", f"must be positive, got {self.emb_size}")
        _require(2 <= self.q_levels <= 65536, "q_levels", f"must be in [2, 65536], got {self.q_levels}")
        _require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

    @property
    def top_frame_size(self) -> int:
        """B: frame size of the top tier, and the context overlap of consecutive windows."""
        return self.frame_sizes[0]

    @property
    def bottom_frame_size(self) -> int:
        """F: how many previous samples the sample-level MLP sees."""
        return self.frame_sizes[-1]


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How audio becomes training windows.

    Attributes:
      sample_rate: every file is resampled to this rate (Hz).
      q_type: 'linear', 'mu-law' or 'a-law' quantization.
      normalize: per-file amplitude normalization: 'none', 'peak' (divide by abs-max, keeps DC
        and dynamics within the file) or 'min-max' (map [min, max] to [-1, 1], what the Theano
        and Torch versions do; shifts DC).
      remove_dc: subtract each file's mean before normalizing.
      seq_len: L, the truncated-BPTT window length in samples.
      chunk_seconds: if > 0, cut long files into chunks of this length that count as files.
      valid_fraction, test_fraction: fractions of files for the seeded split, used when the
        data directory has no train/valid/test subfolders.
      split_seed: seed of that split.
      strict: unreadable files are fatal instead of skipped with a warning.
    """

    sample_rate: int = 16000
    q_type: str = "mu-law"
    normalize: str = "peak"
    remove_dc: bool = True
    seq_len: int = 512
    chunk_seconds: float = 0.0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    strict: bool = False

    def __post_init__(self):
        _require(self.sample_rate >= 1000, "sample_rate", f"must be >= 1000 Hz, got {self.sample_rate}")
        _choice(self.q_type, "q_type", Q_TYPES)
        _choice(self.normalize, "normalize", NORMALIZATIONS)
        _require(self.seq_len >= 1, "seq_len", f"must be positive, got {self.seq_len}")
        _require(self.chunk_seconds >= 0, "chunk_seconds", f"must be >= 0, got {self.chunk_seconds}")
        _require(0 <= self.valid_fraction < 1, "valid_fraction", f"must be in [0, 1), got {self.valid_fraction}")
        _require(0 <= self.test_fraction < 1, "test_fraction", f"must be in [0, 1), got {self.test_fraction}")
        _require(self.valid_fraction + self.test_fraction < 1, "valid_fraction",
                 f"valid_fraction + test_fraction must leave files for training, got "
                 f"{self.valid_fraction} + {self.test_fraction}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimization and bookkeeping.

    Attributes:
      batch_size: global batch size (rows = parallel audio streams).
      learning_rate: peak Adam learning rate.
      lr_schedule: 'constant', 'cosine' (decay to 0 at max_steps) or 'exponential'.
      warmup_steps: linear warm-up steps before the schedule.
      lr_decay_rate, lr_decay_steps: for 'exponential': lr * rate ** (step / decay_steps).
      max_steps: training stops at this global step.
      clip_type: 'norm' (global norm), 'value' (element-wise) or 'none'.
      clip_value: the norm or value bound.
      checkpoint_every, valid_every, log_every, audio_every: period in steps (0 = never,
        except that a checkpoint is always written at exit).
      audio_seconds: length of the generated TensorBoard audio.
      keep_checkpoints: how many recent checkpoints to keep (the best is kept apart).
      early_stopping: stop after this many validations without improvement (0 = never).
      seed: seed for data order, initialization and sampling.
      mixed_precision: 'float32', 'bf16' or 'fp16'.
      max_nonfinite_steps: a step with a non-finite loss or gradients is skipped (no update);
        training stops after this many such steps in a row.
    """

    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_decay_rate: float = 0.5
    lr_decay_steps: int = 100000
    max_steps: int = 100000
    clip_type: str = "norm"
    clip_value: float = 1.0
    checkpoint_every: int = 1000
    valid_every: int = 1000
    log_every: int = 50
    audio_every: int = 5000
    audio_seconds: float = 2.0
    keep_checkpoints: int = 3
    early_stopping: int = 0
    seed: int = 1234
    mixed_precision: str = "float32"
    max_nonfinite_steps: int = 10

    def __post_init__(self):
        _require(self.batch_size >= 1, "batch_size", f"must be positive, got {self.batch_size}")
        _require(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        _choice(self.lr_schedule, "lr_schedule", LR_SCHEDULES)
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(0 < self.lr_decay_rate <= 1, "lr_decay_rate", f"must be in (0, 1], got {self.lr_decay_rate}")
        _require(self.lr_decay_steps >= 1, "lr_decay_steps", f"must be >= 1, got {self.lr_decay_steps}")
        _require(self.max_steps >= 1, "max_steps", f"must be positive, got {self.max_steps}")
        _choice(self.clip_type, "clip_type", CLIP_TYPES)
        _require(self.clip_value > 0, "clip_value", f"must be > 0, got {self.clip_value}")
        for name in ("checkpoint_every", "valid_every", "log_every", "audio_every", "early_stopping"):
            _require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        _require(self.audio_seconds > 0, "audio_seconds", f"must be > 0, got {self.audio_seconds}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {self.keep_checkpoints}")
        _choice(self.mixed_precision, "mixed_precision", PRECISIONS)
        _require(self.max_nonfinite_steps >= 1, "max_nonfinite_steps",
                 f"must be >= 1, got {self.max_nonfinite_steps}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Cross-field checks live here."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        top = self.model.top_frame_size
        _require(self.data.seq_len % top == 0, "seq_len",
                 f"must be a multiple of the top frame size {top} (--frame_sizes), got {self.data.seq_len}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Builds a Config from `to_dict()` output. Unknown keys are an error, not ignored."""
        parts = {}
        for name, klass in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            section = dict(d.get(name, {}))
            known = {f.name for f in dataclasses.fields(klass)}
            unknown = sorted(set(section) - known)
            if unknown:
                raise ConfigError(f"config section {name!r} has unknown fields {unknown}")
            parts[name] = klass(**section)
        unknown = sorted(set(d) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(f"config has unknown sections {unknown}")
        return cls(**parts)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))

    def replace(self, **sections) -> "Config":
        """Returns a copy with whole sections replaced, e.g. `cfg.replace(train=new_train)`."""
        return dataclasses.replace(self, **sections)

    def save(self, logdir: str) -> str:
        """Writes `<logdir>/config.json` atomically and returns its path."""
        tf.io.gfile.makedirs(logdir)
        path = os.path.join(logdir, CONFIG_FILENAME)
        tmp = path + ".tmp"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(self.to_json() + "\n")
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return path

    @classmethod
    def load(cls, logdir: str) -> "Config":
        """Reads `<logdir>/config.json`.

        Raises:
          FileNotFoundError: naming the missing file.
          ConfigError: the file is not a valid config.
        """
        path = os.path.join(logdir, CONFIG_FILENAME)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path}: no config.json here; is --logdir a training run directory?")
        with tf.io.gfile.GFile(path) as f:
            text = f.read()
        try:
            return cls.from_json(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"{path}: not a valid config: {e}") from e
