"""The training job end to end: logs, checkpoints, exact resume, validation, evaluate, errors."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
import tempfile

from samplernn_tf import checkpoints, training
from samplernn_tf.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig
from tests import audio_fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(root, seconds=(1.0, 0.7, 1.3, 0.4), rate=8000):
    """Tonal files in train/valid/test subfolders."""
    for split, n in (("train", len(seconds)), ("valid", 1), ("test", 1)):
        for i in range(n):
            t = np.arange(int(seconds[i % len(seconds)] * rate)) / rate
            f0 = 220.0 * (1 + i % 3)
            x = 0.5 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 2 * f0 * t)
            audio_fixtures.write_wav(os.path.join(root, split, f"{split}{i}.wav"), x[:, None], rate)
    return root


def tiny_config(**train):
    defaults = dict(batch_size=2, learning_rate=3e-3, max_steps=12, checkpoint_every=5,
                    valid_every=6, log_every=1, audio_every=0, seed=3)
    defaults.update(train)
    return Config(model=ModelConfig(frame_sizes=(8, 2), dim=16, emb_size=8, q_levels=16),
                  data=DataConfig(sample_rate=8000, seq_len=32),
                  train=TrainConfig(**defaults))


def train_losses(logdir):
    """step -> train bits_per_sample, read back from the TensorBoard event files."""
    out = {}
    for path in glob.glob(os.path.join(logdir, "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == "bits_per_sample":
                    out[event.step] = float(tf.make_ndarray(v.tensor))
    return out


class TrainingTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.data = write_corpus(os.path.join(tempfile.mkdtemp(), "corpus"))

    def test_resume_continues_the_loss_curve_exactly(self):
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        straight = os.path.join(tmp, "straight")
        with self.assertLogs(level="INFO") as logs:
            result = training.run(tiny_config(), self.data, straight)
        text = "\n".join(logs.output)
        self.assertIn("saved checkpoint", text)
        self.assertIn("at step 5", text)
        self.assertEqual(result.step, 12)
        self.assertTrue(os.path.exists(os.path.join(straight, "config.json")))
        self.assertEqual(Config.load(straight), tiny_config())
        self.assertIsNotNone(result.best_valid_bits_per_sample)
        self.assertEqual([s for s, _ in result.valid_history], [6, 12])

        resumed = os.path.join(tmp, "resumed")
        first = training.run(tiny_config(max_steps=7, checkpoint_every=0), self.data, resumed)
        self.assertEqual(first.step, 7)
        with self.assertLogs(level="INFO") as logs:
            second = training.run(tiny_config(), self.data, resumed)
        self.assertTrue(any(f"resumed from {os.path.join(resumed, 'checkpoints', 'ckpt-7')} at step 7"
                            in line for line in logs.output), logs.output)
        self.assertEqual(second.step, 12)
        a, b = train_losses(straight), train_losses(resumed)
        self.assertEqual(sorted(a), list(range(1, 13)))
        for step in range(8, 13):  # RNN state and data position were restored: same numbers
            self.assertAlmostEqual(a[step], b[step], places=4, msg=f"step {step}")
        self.assertLess(np.mean([a[s] for s in range(10, 13)]), np.mean([a[s] for s in range(1, 4)]))

    def test_incompatible_logdir_is_refused_naming_fields(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        training.run(tiny_config(max_steps=2, valid_every=0), self.data, logdir)
        other = tiny_config(max_steps=4).replace(model=ModelConfig(frame_sizes=(8, 2), dim=24,
                                                                    emb_size=8, q_levels=16))
        with self.assertRaisesRegex(ConfigError, "--dim: 16 in the run, 24 now"):
            training.run(other, self.data, logdir)
        result = training.run(other, self.data, logdir, overwrite=True)
        self.assertEqual(result.step, 4)  # started afresh
        self.assertTrue(glob.glob(os.path.join(logdir, "checkpoints.replaced-*")))

    def test_damaged_latest_checkpoint_falls_back_to_the_previous(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        training.run(tiny_config(max_steps=10, valid_every=0), self.data, logdir)
        data_file = glob.glob(os.path.join(logdir, "checkpoints", "ckpt-10.data-*"))[0]
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)
        with self.assertLogs(level="INFO") as logs:
            result = training.run(tiny_config(max_steps=12, valid_every=0), self.data, logdir)
        text = "\n".join(logs.output)
        self.assertIn(f"checkpoint {data_file}", text)
        self.assertIn("damaged", text)
        self.assertIn(f"resumed from {os.path.join(logdir, 'checkpoints', 'ckpt-5')} at step 5", text)
        self.assertEqual(result.step, 12)

    def test_generated_audio_and_hparams_reach_tensorboard(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        cfg = tiny_config(max_steps=4, valid_every=0, audio_every=2, audio_seconds=0.05)
        training.run(cfg, self.data, logdir)
        audio_steps = []
        for path in glob.glob(os.path.join(logdir, "samples", "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for v in event.summary.value:
                    if v.tag == "generated":
                        clips = tf.make_ndarray(v.tensor)  # [k, 2]: encoded WAV, label
                        self.assertEqual(clips.shape[0], 2)
                        wav = tf.audio.decode_wav(clips[0, 0])
                        self.assertEqual(int(wav.sample_rate), 8000)
                        self.assertEqual(wav.audio.shape[0], 400)
                        audio_steps.append(event.step)
        self.assertEqual(sorted(audio_steps), [2, 4])
        tags = set()
        for path in glob.glob(os.path.join(logdir, "train", "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                tags.update(v.tag for v in event.summary.value)
        self.assertIn("_hparams_/session_start_info", tags)
        self.assertTrue({"bits_per_sample", "grad_norm", "learning_rate", "samples_per_second"} <= tags)

    def test_no_usable_audio_fails_before_training(self):
        root = tempfile.mkdtemp(dir=self.get_temp_dir())
        audio_fixtures.write_bytes(os.path.join(root, "train", "broken.wav"), b"not audio at all")
        audio_fixtures.write_bytes(os.path.join(root, "valid", "empty.flac"), b"")
        os.makedirs(os.path.join(root, "test"))
        with self.assertRaisesRegex(Exception, "no usable training audio"):
            training.run(tiny_config(), root, os.path.join(root, "run"))
        self.assertFalse(os.path.exists(os.path.join(root, "run", "checkpoints")))


def run_binary(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


class BinaryTest(tf.test.TestCase):

    def test_train_then_evaluate_binaries(self):
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        data = write_corpus(os.path.join(tmp, "data"))
        logdir = os.path.join(tmp, "run")
        proc = run_binary("samplernn_tf.train", f"--data_dir={data}", f"--logdir={logdir}",
                          "--frame_sizes=8,2", "--dim=16", "--emb_size=8", "--q_levels=16",
                          "--seq_len=32", "--sample_rate=8000", "--batch_size=2", "--max_steps=6",
                          "--valid_every=3", "--log_every=2", "--audio_every=0")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("saved checkpoint", proc.stderr)
        self.assertIn("bits/sample", proc.stderr)
        self.assertIsNotNone(checkpoints.read_best(logdir))
        proc = run_binary("samplernn_tf.evaluate", f"--logdir={logdir}", f"--data_dir={data}",
                          "--split=test")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.assertEqual(result["split"], "test")
        self.assertEqual(result["num_samples"], 8000)  # every sample of the 1 s test file
        self.assertTrue(0.0 < result["nll_bits_per_sample"] < 16.0)
        # The binary computes exactly what training's validation computed for the best weights.
        proc = run_binary("samplernn_tf.evaluate", f"--logdir={logdir}", f"--data_dir={data}",
                          "--split=valid", "--checkpoint=best")
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        valid = json.loads(proc.stdout.strip().splitlines()[-1])
        best = checkpoints.read_best(logdir)
        self.assertEqual(valid["step"], best["step"])
        self.assertAlmostEqual(valid["nll_bits_per_sample"], best["valid_bits_per_sample"], places=4)

    def test_bad_flags_fail_before_work_naming_the_flag(self):
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        for flag, needle in (("--frame_sizes=8,3", "--frame_sizes"), ("--seq_len=30", "--seq_len"),
                             ("--rnn_type=transformer", "rnn_type")):
            proc = run_binary("samplernn_tf.train", f"--data_dir={tmp}", f"--logdir={tmp}/run", flag)
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn(needle, proc.stderr)
            self.assertNotIn("Traceback", proc.stderr)
        proc = run_binary("samplernn_tf.train", f"--data_dir={tmp}/missing", f"--logdir={tmp}/run")
        self.assertEqual(proc.returncode, 2)
        self.assertIn("missing", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    tf.test.main()
