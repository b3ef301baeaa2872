"""Trains SampleRNN: `python -m samplernn_tf.train --data_dir=DIR --logdir=RUN [flags]`.

Running the same command again resumes from the latest checkpoint in --logdir.
See `--helpfull` for every flag, BUILD.md for examples and docs/distributed.md for multi-GPU
and multi-machine runs (--strategy) and what happens on SIGTERM, kill -9 or a NaN loss.

Exit status: 0 when training stopped normally, also on SIGTERM/SIGINT (after saving a
checkpoint); 2 on a user error (bad flags or data, locked logdir, or --max_nonfinite_steps
non-finite steps in a row, after saving).
"""

from __future__ import annotations

from absl import app
from absl import flags
from absl import logging

from flags import train as train_flags
from samplernn_tf import errors

FLAGS = flags.FLAGS


def main(argv):
    del argv
    with errors.exit_on_user_error():
        config = train_flags.config_from_flags()
        from samplernn_tf import cli, training  # after flag parsing: keeps --help fast
        cli.setup()  # before anything initializes the GPUs
        result = training.run(config, FLAGS.data_dir, FLAGS.logdir,
                              time_limit_minutes=FLAGS.time_limit_minutes,
                              valid_batch_size=FLAGS.valid_batch_size, overwrite=FLAGS.overwrite,
                              strategy=FLAGS.strategy)
        logging.info("done: step %d, train %.4f bits/sample, best valid %s bits/sample",
                     result.step, result.train_bits_per_sample,
                     f"{result.best_valid_bits_per_sample:.4f}"
                     if result.best_valid_bits_per_sample is not None else "n/a")


if __name__ == "__main__":
    train_flags.define_flags()
    app.run(main)
