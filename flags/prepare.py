"""Flags of `python -m pipelines.prepare`."""

from __future__ import annotations

from absl import flags

from samplernn_tf import config as config_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
    d = config_lib.DataConfig()
    flags.DEFINE_string("input", None,
                        "Audio directory (searched recursively; train/ valid/ test/ subfolders are "
                        "kept as the splits), a glob, or one file. Local or gs://.")
    flags.DEFINE_string("output", None,
                        "Directory for the TFRecord shards and manifest.json (local or gs://); "
                        "then train with --data_dir=<this directory>. Running the same command "
                        "again keeps the shards that are already complete.")
    flags.DEFINE_integer("sample_rate", d.sample_rate,
                         "Every file is resampled to this rate (Hz); training must use the same.")
    flags.DEFINE_enum("normalize", d.normalize, config_lib.NORMALIZATIONS,
                      "Per-file normalization, as in training (which must use the same).")
    flags.DEFINE_boolean("remove_dc", d.remove_dc,
                         "Subtract each file's mean before normalizing (training must match).")
    flags.DEFINE_float("shard_seconds", 3600.0,
                       "Seconds of audio per shard; a shard closes at the first file that reaches it.")
    flags.DEFINE_boolean("strict", d.strict, "Unreadable audio files are fatal instead of skipped.")
    flags.mark_flags_as_required(["input", "output"])


def prepare_kwargs_from_flags() -> dict:
    """Keyword arguments of `pipelines.shard_writer.prepare` from the parsed flags."""
    return dict(input_path=FLAGS.input, output_dir=FLAGS.output, sample_rate=FLAGS.sample_rate,
                normalize=FLAGS.normalize, remove_dc=FLAGS.remove_dc,
                shard_seconds=FLAGS.shard_seconds, strict=FLAGS.strict)
