"""Surviving faults: non-finite steps, SIGTERM, kill -9, damaged state files, the logdir lock."""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines import dataset as dataset_lib
from samplernn_tf import training
from samplernn_tf.trainer import Trainer
from tests.test_trainer import random_batches, tiny
from tests.test_training import ROOT, tiny_config, write_corpus

TINY_FLAGS = ("--frame_sizes=8,2", "--dim=16", "--emb_size=8", "--q_levels=16", "--seq_len=32",
              "--sample_rate=8000", "--batch_size=2", "--learning_rate=3e-3", "--seed=3",
              "--audio_every=0", "--valid_every=0", "--log_every=1")


def scalars(logdir, tag, stream="train"):
    """step -> value of a TensorBoard scalar."""
    out = {}
    for path in glob.glob(os.path.join(logdir, stream, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def with_nan_weights(steps):
    """A train_dataset replacement whose batches number `steps` (1-based) have NaN weights."""
    real = dataset_lib.train_dataset

    def patched(*args, **kwargs):
        ds = real(*args, **kwargs).enumerate(start=1)
        bad = tf.constant(sorted(steps), tf.int64)

        def poison(i, batch):
            hit = tf.reduce_any(tf.equal(bad, i))
            w = batch["weights"]
            return dict(batch, weights=tf.where(hit, w * np.float32("nan"), w))

        return ds.map(poison)

    return patched


class NonFiniteStepTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters("float32", "bf16", "fp16")
    def test_nonfinite_step_changes_nothing_but_the_step(self, precision):
        config = tiny(learning_rate=1e-2, mixed_precision=precision)
        data = random_batches(config, 3, seed=7)
        trainer = Trainer(config)
        trainer.train_step(data[0])
        weights = [v.numpy() for v in trainer.model.weights]
        slots = [v.numpy() for v in trainer.optimizer.variables]
        states = [s.numpy() for s in tf.nest.flatten(trainer.model.get_states())]
        nan_batch = dict(data[1], weights=tf.tensor_scatter_nd_update(
            data[1]["weights"], [[2, 7]], [float("nan")]))
        metrics = trainer.train_step(nan_batch)
        self.assertFalse(bool(metrics["finite"]))
        self.assertEqual(int(trainer.step), 2)  # the step counts batches, skipped or not
        for a, v in zip(weights, trainer.model.weights):
            self.assertAllEqual(a, v.numpy())
        for a, s in zip(states, tf.nest.flatten(trainer.model.get_states())):
            self.assertAllEqual(a, s.numpy())
        if precision != "fp16":  # the loss-scale optimizer halves its scale on a skipped step
            for a, v in zip(slots, trainer.optimizer.variables):
                self.assertAllEqual(a, v.numpy(), msg=v.path)
        else:
            self.assertEqual(int(trainer.optimizer.iterations), 1)
        metrics = trainer.train_step(data[2])  # training goes on
        self.assertTrue(bool(metrics["finite"]))
        self.assertTrue(np.isfinite(float(metrics["bits_per_sample"])))
        self.assertGreater(max(np.abs(a - v.numpy()).max()
                               for a, v in zip(weights, trainer.model.weights)), 0.0)
        self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)


class RunFaultsTest(tf.test.TestCase, parameterized.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.data = write_corpus(os.path.join(tempfile.mkdtemp(), "corpus"))

    def logdir(self):
        return tempfile.mkdtemp(dir=self.get_temp_dir())

    def test_nan_batches_are_skipped_counted_and_training_continues(self):
        logdir = self.logdir()
        with tf.compat.v1.test.mock.patch.object(dataset_lib, "train_dataset", with_nan_weights({3, 4})):
            with self.assertLogs(level="INFO") as logs:
                result = training.run(tiny_config(max_steps=8, valid_every=0), self.data, logdir)
        text = "\n".join(logs.output)
        self.assertEqual(result.step, 8)
        self.assertEqual(result.nonfinite_steps, 2)
        self.assertIn("step 3: non-finite loss or gradients", text)
        self.assertIn("update skipped", text)
        counts = scalars(logdir, "nonfinite_steps")
        self.assertEqual(counts[2], 0)
        self.assertEqual(counts[3], 1)
        self.assertEqual(counts[8], 2)
        bits = scalars(logdir, "bits_per_sample")
        self.assertTrue(all(np.isfinite(bits[s]) for s in (1, 2, 5, 6, 7, 8)))

    def test_k_nonfinite_steps_in_a_row_stop_with_the_last_finite_weights(self):
        logdir = self.logdir()
        config = tiny_config(max_steps=50, valid_every=0, checkpoint_every=2, max_nonfinite_steps=3)
        with tf.compat.v1.test.mock.patch.object(dataset_lib, "train_dataset",
                                                 with_nan_weights(set(range(5, 60)))):
            with self.assertRaisesRegex(training.NonFiniteLossError,
                                        r"stopped at step 7: the last 3 .*step 4 .*--max_nonfinite_steps"):
                training.run(config, self.data, logdir)
        saved = {int(p.rsplit("-", 1)[1][:-len(".index")])
                 for p in glob.glob(os.path.join(logdir, "checkpoints", "ckpt-*.index"))}
        self.assertIn(4, saved)
        self.assertIn(7, saved)  # the exit checkpoint
        step4 = dict(tf.train.list_variables(os.path.join(logdir, "checkpoints", "ckpt-4")))
        for name in step4:
            if name.startswith("model/"):
                self.assertAllEqual(tf.train.load_variable(os.path.join(logdir, "checkpoints", "ckpt-4"), name),
                                    tf.train.load_variable(os.path.join(logdir, "checkpoints", "ckpt-7"), name))

    @parameterized.parameters(("garbage", b"model_checkpoint_path: \x00\xff{{ not a proto"),
                              ("empty", b""),
                              ("missing", b'model_checkpoint_path: "ckpt-99"\n'
                                          b'all_model_checkpoint_paths: "ckpt-99"\n'))
    def test_damaged_checkpoint_state_file_is_rebuilt(self, kind, content):
        logdir = self.logdir()
        training.run(tiny_config(max_steps=10, valid_every=0), self.data, logdir)
        state_file = os.path.join(logdir, "checkpoints", "checkpoint")
        with open(state_file, "wb") as f:
            f.write(content)
        with self.assertLogs(level="INFO") as logs:
            result = training.run(tiny_config(max_steps=12, valid_every=0, keep_checkpoints=2),
                                  self.data, logdir)
        text = "\n".join(logs.output)
        self.assertIn(f"{state_file} is damaged", text)
        self.assertIn(f"resumed from {os.path.join(logdir, 'checkpoints', 'ckpt-10')} at step 10", text)
        self.assertEqual(result.step, 12)
        self.assertTrue(glob.glob(state_file + ".damaged-*"))
        self.assertEqual(tf.train.latest_checkpoint(os.path.join(logdir, "checkpoints")),
                         os.path.join(logdir, "checkpoints", "ckpt-12"))
        # The rebuilt state lets the manager delete old checkpoints as usual (keep 2).
        self.assertEqual(sorted(os.path.basename(p) for p in glob.glob(
            os.path.join(logdir, "checkpoints", "ckpt-*.index"))), ["ckpt-10.index", "ckpt-12.index"])

    def test_stale_lock_of_a_dead_process_is_taken_over(self):
        logdir = self.logdir()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        lock = os.path.join(logdir, training.LOCK_FILE)
        with open(lock, "w") as f:
            f.write(f"{socket.gethostname()}:{dead.pid}")
        with self.assertLogs(level="INFO") as logs:
            result = training.run(tiny_config(max_steps=2, valid_every=0), self.data, logdir)
        self.assertIn(f"taking over a stale lock {lock} left by {socket.gethostname()}:{dead.pid}",
                      "\n".join(logs.output))
        self.assertEqual(result.step, 2)
        self.assertFalse(os.path.exists(lock))  # released at exit


class TrainingProcess:
    """A training binary in a subprocess whose log (stderr) is read as it comes."""

    def __init__(self, data, logdir, *flags):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "samplernn_tf.train", f"--data_dir={data}",
             f"--logdir={logdir}", *TINY_FLAGS, *flags],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self):
        return "".join(self.lines)

    def wait_for(self, pattern, timeout=120):
        """Waits until a log line matches `pattern`; returns the match."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"no log line matching {pattern!r}; log:\n{self.log[-3000:]}")

    def wait(self, timeout=120):
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc


class ProcessFaultsTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.data = write_corpus(os.path.join(tempfile.mkdtemp(), "corpus"))

    def test_sigterm_saves_a_checkpoint_and_exits_0(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        job = TrainingProcess(self.data, logdir, "--max_steps=100000", "--checkpoint_every=100000")
        job.wait_for(r"step 5/100000")
        job.proc.send_signal(signal.SIGTERM)
        self.assertEqual(job.wait(), 0, job.log[-3000:])
        self.assertIn("SIGTERM received: saving a checkpoint", job.log)
        m = re.search(r"saved checkpoint (\S+) at step (\d+) \(exit: SIGTERM\)", job.log)
        self.assertIsNotNone(m, job.log[-3000:])
        self.assertGreaterEqual(int(m.group(2)), 5)
        self.assertEqual(m.group(1), os.path.join(logdir, "checkpoints", f"ckpt-{m.group(2)}"))
        self.assertTrue(os.path.exists(m.group(1) + ".index"))
        self.assertIn(f"training stopped at step {m.group(2)} (SIGTERM)", job.log)
        self.assertFalse(os.path.exists(os.path.join(logdir, training.LOCK_FILE)))

    def test_kill_9_then_the_same_command_resumes_from_the_last_checkpoint(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        every = 4
        job = TrainingProcess(self.data, logdir, "--max_steps=100000", f"--checkpoint_every={every}")
        job.wait_for(rf"saved checkpoint .* at step {3 * every} ")
        job.proc.kill()  # SIGKILL: no handler, no exit checkpoint
        job.wait()
        logged = max(int(s) for s in re.findall(r"step (\d+)/100000", job.log))
        self.assertNotIn("exit:", job.log)
        self.assertTrue(os.path.exists(os.path.join(logdir, training.LOCK_FILE)))  # left behind

        again = TrainingProcess(self.data, logdir, "--max_steps=100000", f"--checkpoint_every={every}")
        m = again.wait_for(r"resumed from (\S+) at step (\d+)")
        resumed = int(m.group(2))
        again.wait_for(rf"step {resumed + 2}/100000")
        again.proc.send_signal(signal.SIGTERM)
        self.assertEqual(again.wait(), 0, again.log[-3000:])
        self.assertIn("taking over a stale lock", again.log)
        self.assertEqual(resumed % every, 0)
        self.assertGreaterEqual(resumed, 3 * every)
        self.assertGreaterEqual(resumed, logged - every)  # lost at most --checkpoint_every steps
        self.assertEqual(m.group(1), os.path.join(logdir, "checkpoints", f"ckpt-{resumed}"))

    def test_second_trainer_is_refused_while_the_first_runs(self):
        logdir = tempfile.mkdtemp(dir=self.get_temp_dir())
        first = TrainingProcess(self.data, logdir, "--max_steps=100000", "--checkpoint_every=3")
        first.wait_for(r"saved checkpoint .* at step 3 ")
        with open(os.path.join(logdir, "config.json")) as f:
            config_before = f.read()
        # Even with another setup and --overwrite, it must not touch the live run.
        second = TrainingProcess(self.data, logdir, "--max_steps=10", "--dim=24", "--overwrite")
        self.assertEqual(second.wait(), 2, second.log[-3000:])
        self.assertRegex(second.log, rf"error: {re.escape(os.path.join(logdir, training.LOCK_FILE))}: "
                                     rf"another trainer \(pid {first.proc.pid}\) is using this logdir")
        self.assertNotIn("Traceback", second.log)
        with open(os.path.join(logdir, "config.json")) as f:
            self.assertEqual(f.read(), config_before)
        self.assertFalse(glob.glob(os.path.join(logdir, "checkpoints.replaced-*")))
        first.proc.send_signal(signal.SIGTERM)
        self.assertEqual(first.wait(), 0, first.log[-3000:])


if __name__ == "__main__":
    tf.test.main()
