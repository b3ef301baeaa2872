"""Flags of `python -m samplernn_tf.demo` (what `make demo` runs)."""

from __future__ import annotations

from absl import flags


def define_flags() -> None:
    flags.DEFINE_string("data_dir", "data/demo", "Bundled demo corpus (train/ valid/ test/).")
    flags.DEFINE_string("logdir", "runs/demo", "Run directory.")
    flags.DEFINE_string("output_dir", None, "Where generated WAVs go (default <logdir>/samples).")
    flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (default <logdir>/export).")
    flags.DEFINE_integer("max_steps", 800,
                         "Training steps (~4 minutes on 2 CPU cores); the learning rate decays to 0 "
                         "at the last step.")
    flags.DEFINE_float("minutes", 8.0, "Safety cap on training time in minutes (on a slow machine "
                       "training stops here, with a checkpoint, before --max_steps).")
