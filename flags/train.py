"""Flags of `python -m samplernn_tf.train`."""

from __future__ import annotations

from absl import flags

from flags import common
from samplernn_tf.distribute import STRATEGIES


def define_flags() -> None:
    flags.DEFINE_string("data_dir", None,
                        "Audio directory (searched recursively; train/ valid/ test/ subfolders are "
                        "used as the splits when present), a glob, or a directory written by "
                        "`python -m pipelines.prepare`. Local or gs://.")
    flags.DEFINE_string("logdir", None,
                        "Run directory: config.json, checkpoints and TensorBoard logs. Running the "
                        "same command again resumes from its latest checkpoint.")
    flags.DEFINE_float("time_limit_minutes", 0.0,
                       "Stop (with a checkpoint) after this many minutes of training; 0 = no limit.")
    flags.DEFINE_integer("valid_batch_size", 32, "Rows of the validation batches.")
    flags.DEFINE_boolean("overwrite", False,
                         "Allow a --logdir whose config.json has a different model or data setup; "
                         "its old checkpoints are ignored and the run starts from step 0.")
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES),
                      "Distribution: 'default' (one device), 'mirrored' (this machine's GPUs), "
                      "'multi_worker' (several machines; cluster from the TF_CONFIG environment "
                      "variable), 'tpu' (TPUClusterResolver; untested). --batch_size is global and "
                      "split across replicas. See docs/distributed.md.")
    common.define_model_flags()
    common.define_data_flags()
    common.define_train_flags()
    flags.mark_flags_as_required(["data_dir", "logdir"])


config_from_flags = common.config_from_flags
