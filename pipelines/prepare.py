"""Decodes a corpus once into int16 TFRecord shards that training reads instead of the audio.

    python -m pipelines.prepare --input=DIR_OR_GLOB --output=DIR --sample_rate=16000 \
        [--normalize=peak --remove_dc] [--shard_seconds=3600] [--strict]

Then train with `--data_dir=DIR` and the same --sample_rate / --normalize / --remove_dc.
Running the same command again keeps complete shards and redoes the rest. The last line
printed is a JSON summary (files, skipped, shards, seconds).
"""

from __future__ import annotations

import json
import time

from absl import app
from absl import flags

from flags import prepare as prepare_flags
from samplernn_tf import errors

FLAGS = flags.FLAGS


def main(argv):
    del argv
    with errors.exit_on_user_error():
        from pipelines import shard_writer  # after flag parsing: keeps --help fast
        start = time.time()
        manifest = shard_writer.prepare(**prepare_flags.prepare_kwargs_from_flags())
        elapsed = time.time() - start
        print(json.dumps({
            "output": FLAGS.output, "num_files": manifest["num_files"],
            "num_skipped": manifest["num_skipped"], "num_shards": manifest["num_shards"],
            "total_seconds": round(manifest["total_seconds"], 3), "elapsed_seconds": round(elapsed, 3),
            "audio_seconds_per_second": round(manifest["total_seconds"] / max(elapsed, 1e-9), 1)}))


if __name__ == "__main__":
    prepare_flags.define_flags()
    app.run(main)
