"""NLL in bits per sample of a trained model over every sample of every file of a split.

    python -m samplernn_tf.evaluate --logdir=RUN --data_dir=DIR --split=test

The last line printed is one JSON object: split, nll_bits_per_sample, num_samples, num_files,
seconds, checkpoint, step.
"""

from __future__ import annotations

import json

from absl import app
from absl import flags
from absl import logging

from flags import evaluate as evaluate_flags
from samplernn_tf import errors

FLAGS = flags.FLAGS


def evaluate_split(logdir: str, data_dir: str, split: str, checkpoint: str = "best",
                   batch_size: int = 32) -> dict:
    """Restores the run's model and evaluates `split` of `data_dir` (split as in training)."""
    from pipelines import dataset as dataset_lib
    from pipelines import records
    from samplernn_tf import checkpoints, evaluation
    from samplernn_tf.config import Config
    from samplernn_tf.model import SampleRNN

    config = Config.load(logdir)
    path = checkpoints.resolve(logdir, checkpoint)
    d = config.data
    files = dataset_lib.find_splits(data_dir, d.valid_fraction, d.test_fraction, d.split_seed)[split]
    prepared_dir = data_dir if records.is_prepared(data_dir) else None
    corpus = dataset_lib.load_corpus(files, config, prepared_dir=prepared_dir)
    if len(corpus) == 0:
        raise dataset_lib.NoAudioError(f"--data_dir={data_dir}: the {split} split has no usable audio")
    model = SampleRNN(config.model)
    step = checkpoints.restore_weights(model, path)
    logging.info("evaluating %s (step %d) on %d %s files", path, step, len(corpus), split)
    result = evaluation.Evaluator(model).evaluate(corpus, config, batch_size)
    return {"split": split, **result, "checkpoint": path, "step": step}


def main(argv):
    del argv
    with errors.exit_on_user_error():
        from samplernn_tf import cli
        cli.setup()
        result = evaluate_split(FLAGS.logdir, FLAGS.data_dir, FLAGS.split, FLAGS.checkpoint,
                                FLAGS.batch_size)
        print(json.dumps(result))


if __name__ == "__main__":
    evaluate_flags.define_flags()
    app.run(main)
