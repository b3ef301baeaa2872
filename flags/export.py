"""Flags of `python -m samplernn_tf.export`."""

from __future__ import annotations

from absl import flags

JIT_CHOICES = ("auto", "on", "off")


def define_flags() -> None:
    flags.DEFINE_string("logdir", None, "Training run directory (its config.json defines the model).")
    flags.DEFINE_string("export_dir", None,
                        "Model base directory for TF Serving; the SavedModel goes to "
                        "<export_dir>/<version>/.")
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest', or a checkpoint path prefix.")
    flags.DEFINE_string("version", "step",
                        "Version subdirectory: 'step' (the checkpoint's global step), 'next' "
                        "(next free integer) or a positive integer.")
    flags.DEFINE_enum("jit", "auto", JIT_CHOICES,
                      "XLA-compile the generation loop body. 'auto' = on for dim <= 512, and above "
                      "it for batches of <= 8 rows (faster there). A server needs XLA:CPU enabled "
                      "unless 'off' (TF Serving: --xla_cpu_compilation_enabled=true).")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing version directory.")
    flags.mark_flags_as_required(["logdir", "export_dir"])


def jit_from_flag(value: str):
    """'auto' -> None, 'on' -> True, 'off' -> False."""
    return {"auto": None, "on": True, "off": False}[value]
