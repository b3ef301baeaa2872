"""Flags of `python -m samplernn_tf.evaluate`."""

from __future__ import annotations

from absl import flags


def define_flags() -> None:
    flags.DEFINE_string("logdir", None, "Training run directory (its config.json defines the model and data setup).")
    flags.DEFINE_string("data_dir", None, "Audio directory, as given to training.")
    flags.DEFINE_enum("split", "test", ["train", "valid", "test"], "Which split to evaluate.")
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest', or a checkpoint path prefix.")
    flags.DEFINE_integer("batch_size", 32, "Files evaluated in parallel.")
    flags.mark_flags_as_required(["logdir", "data_dir"])
