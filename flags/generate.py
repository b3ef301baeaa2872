"""Flags of `python -m samplernn_tf.generate`."""

from __future__ import annotations

from absl import flags

from flags import export as export_flags


def define_flags() -> None:
    flags.DEFINE_string("logdir", None, "Training run directory (its config.json defines the model).")
    flags.DEFINE_string("output_dir", None, "Where the WAV files go (created if needed).")
    flags.DEFINE_string("checkpoint", "best", "'best', 'latest', or a checkpoint path prefix.")
    flags.DEFINE_integer("num_seqs", 1, "Sequences to generate (generated in parallel, one batch).")
    flags.DEFINE_float("seconds", 4.0, "Length of each sequence in seconds (see --num_samples).")
    flags.DEFINE_integer("num_samples", 0, "Length in samples; overrides --seconds when > 0.")
    flags.DEFINE_float("temperature", 1.0, "Softmax temperature, > 0; near 0 = greedy.")
    flags.DEFINE_integer("seed", 0, "Sampling seed: the same seed and flags give the same audio.")
    flags.DEFINE_string("prime_audio", None,
                        "Optional audio file (any supported format and rate; mixed to mono and "
                        "resampled to the model's rate) whose whole length warms up the model; "
                        "generation continues from its end. At least one top frame long.")
    flags.DEFINE_float("chunk_seconds", 1.0,
                       "Progress is reported after every chunk of this many seconds (the state "
                       "carries over; the audio is identical for any chunk size).")
    flags.DEFINE_enum("jit", "auto", export_flags.JIT_CHOICES,
                      "XLA-compile the generation loop body: 'auto' = on for dim <= 512, and "
                      "above it for <= 8 sequences.")
    flags.mark_flags_as_required(["logdir", "output_dir"])


jit_from_flag = export_flags.jit_from_flag
