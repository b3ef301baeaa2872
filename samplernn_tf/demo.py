"""The quick-start job (`make demo`): train a small SampleRNN on the bundled corpus, evaluate
it on the test split, generate a few seconds of audio and export a SavedModel.

    python -m samplernn_tf.demo [--logdir=runs/demo] [--data_dir=data/demo] [--max_steps=800]

It takes a few minutes on a 2-core CPU. Running it again resumes the same run (and, once
training has reached its last step, only evaluates, generates and exports again).
"""

from __future__ import annotations

import json
import math
import os

from absl import app
from absl import flags
from absl import logging

from flags import demo as demo_flags
from samplernn_tf import errors

FLAGS = flags.FLAGS


def demo_config(max_steps: int):
    """A model that learns something audible in minutes on 2 CPU cores."""
    from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
    return Config(
        model=ModelConfig(frame_sizes=(16, 4), dim=256, rnn_layers=1, emb_size=64, q_levels=256),
        data=DataConfig(sample_rate=16000, q_type="mu-law", seq_len=512),
        train=TrainConfig(batch_size=16, learning_rate=2e-3, lr_schedule="cosine", warmup_steps=50,
                          max_steps=max_steps, checkpoint_every=200, valid_every=100, log_every=25,
                          audio_every=500, audio_seconds=2.0, seed=1234))


def main(argv):
    del argv
    with errors.exit_on_user_error():
        from samplernn_tf import cli, evaluate, export, generate, training
        cli.setup()
        logdir = FLAGS.logdir
        config = demo_config(FLAGS.max_steps)
        result = training.run(config, FLAGS.data_dir, logdir, time_limit_minutes=FLAGS.minutes)
        test = evaluate.evaluate_split(logdir, FLAGS.data_dir, "test")
        wavs = generate.generate_files(logdir, FLAGS.output_dir or os.path.join(logdir, "samples"),
                                       num_seqs=2, seconds=4.0, temperature=1.0, seed=1)
        export_path = export.export_saved_model(logdir, FLAGS.export_dir or os.path.join(logdir, "export"))

        print()
        print("=" * 72)
        print(f"Demo run: {logdir} (stopped: {result.stopped_because} at step {result.step})")
        if result.valid_history:
            print(f"valid bits per sample by step (uniform guess = "
                  f"{math.log2(config.model.q_levels):.2f}):")
            for step, bits in result.valid_history:
                print(f"  step {step:6d}  {bits:.4f}")
        print(f"test: {test['nll_bits_per_sample']:.4f} bits/sample over {test['num_samples']} samples")
        print("generated audio:")
        for w in wavs:
            print(f"  {w}")
        print(f"SavedModel for TF Serving: {export_path}")
        print(f"TensorBoard: tensorboard --logdir {logdir}")
        print(json.dumps({"logdir": logdir, "step": result.step, "test": test["nll_bits_per_sample"]}))
        logging.flush()


if __name__ == "__main__":
    demo_flags.define_flags()
    app.run(main)
