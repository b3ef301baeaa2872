"""Distributed training through `training.run`: mirrored over 2 logical CPUs, a real 2-process
MultiWorkerMirroredStrategy job on localhost, TF_CONFIG errors, bf16 convergence.

Device setup (logical CPUs, collective ops) must precede TensorFlow's initialization, so the
distributed runs happen in subprocesses.
"""

import glob
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import tensorflow as tf

from samplernn_tf import distribute, training
from samplernn_tf.config import ConfigError, ModelConfig
from samplernn_tf.errors import UserError
from samplernn_tf.trainer import Trainer
from tests.test_trainer import Q, chord_batches, tiny
from tests.test_training import ROOT, tiny_config, train_losses, write_corpus

ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
MW_FLAGS = ("--frame_sizes=8,2", "--dim=16", "--emb_size=8", "--q_levels=16", "--seq_len=32",
            "--sample_rate=8000", "--batch_size=4", "--learning_rate=3e-3", "--seed=3",
            "--audio_every=0", "--log_every=1", "--strategy=multi_worker")

MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    from absl import logging
    logging.set_verbosity(logging.INFO)
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from samplernn_tf import training
    from tests.test_training import tiny_config, train_losses
    data, tmp = sys.argv[1], sys.argv[2]
    cfg = lambda steps: tiny_config(batch_size=4, max_steps=steps, checkpoint_every=0, valid_every=5)
    training.run(cfg(10), data, tmp + "/one")                          # one device
    training.run(cfg(6), data, tmp + "/two", strategy="mirrored")       # two replicas...
    training.run(cfg(10), data, tmp + "/two", strategy="mirrored")      # ...resumed
    training.run(cfg(6), data, tmp + "/mixed")                          # one device...
    training.run(cfg(10), data, tmp + "/mixed", strategy="mirrored")    # ...resumed on two
    print("RESULT " + json.dumps({k: train_losses(tmp + "/" + k) for k in ("one", "two", "mixed")}))
""")


def launch_cluster(data, logdir, *flags, chief_job=False, timeout=240):
    """Runs the train binary as a 2-process cluster; returns [(returncode, stderr)], chief first."""
    procs = []
    for tf_config in distribute.local_tf_configs(2, chief_job=chief_job):
        env = dict(ENV, TF_CONFIG=tf_config)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "samplernn_tf.train", f"--data_dir={data}", f"--logdir={logdir}",
             *MW_FLAGS, *flags], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    try:
        logs = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, log) for p, log in zip(procs, logs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


class DistributedRunTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.data = write_corpus(os.path.join(tempfile.mkdtemp(), "corpus"))

    def test_mirrored_on_two_devices_follows_the_one_device_loss_curve(self):
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, self.data, tmp], cwd=ROOT,
                              env=ENV, capture_output=True, text=True, timeout=300)
        lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        self.assertTrue(lines, proc.stderr[-3000:])
        curves = {k: {int(s): v for s, v in c.items()} for k, c in json.loads(lines[0][7:]).items()}
        self.assertIn("--strategy=mirrored: no GPU found, 2 replica(s) on CPU", proc.stderr)
        for run in ("two", "mixed"):
            self.assertIn(f"resumed from {os.path.join(tmp, run, 'checkpoints', 'ckpt-6')} at step 6",
                          proc.stderr)
            self.assertEqual(sorted(curves[run]), list(range(1, 11)))
            for step in range(1, 11):  # same rows, same data order, RNN state carried: same curve
                self.assertAllClose(curves[run][step], curves["one"][step], atol=2e-4,
                                    msg=f"{run} step {step}")
        self.assertNotIn("start afresh", proc.stderr)  # exact resume across 1 <-> 2 replicas
        # The checkpoint holds every global row's RNN state, not one replica's.
        shapes = dict(tf.train.list_variables(os.path.join(tmp, "two", "checkpoints", "ckpt-10")))
        self.assertEqual(shapes["rnn_state/0/.ATTRIBUTES/VARIABLE_VALUE"], [4, 16])
        self.assertTrue(tf.train.latest_checkpoint(os.path.join(tmp, "two", "best")))

    def test_two_process_multi_worker_run_checkpoints_on_the_chief_and_resumes(self):
        tmp = tempfile.mkdtemp(dir=self.get_temp_dir())
        logdir = os.path.join(tmp, "run")
        (rc0, log0), (rc1, log1) = launch_cluster(self.data, logdir, "--max_steps=4",
                                                  "--checkpoint_every=4", "--valid_every=4")
        self.assertEqual(rc0, 0, log0[-3000:])
        self.assertEqual(rc1, 0, log1[-3000:])
        ckpt4 = os.path.join(logdir, "checkpoints", "ckpt-4")
        self.assertIn(f"saved checkpoint {ckpt4} at step 4", log0)
        self.assertNotIn("saved checkpoint", log1)
        self.assertEqual(glob.glob(os.path.join(logdir, "checkpoints", "ckpt-*.index")), [ckpt4 + ".index"])
        self.assertTrue(tf.train.latest_checkpoint(os.path.join(logdir, "best")))
        self.assertEqual(glob.glob(os.path.join(logdir, "**", "workertemp_*"), recursive=True), [])
        self.assertEqual(len(glob.glob(os.path.join(logdir, "train", "events.*"))), 1)  # chief only
        self.assertTrue(os.path.exists(os.path.join(logdir, "config.json")))
        # Worker w trains global rows 2w, 2w+1: the same streams as one device with 4 rows.
        single = os.path.join(tmp, "single")
        training.run(tiny_config(batch_size=4, max_steps=4, checkpoint_every=0, valid_every=0),
                     self.data, single)
        a, b = train_losses(logdir), train_losses(single)
        for step in range(1, 5):
            self.assertAllClose(a[step], b[step], atol=2e-4, msg=f"step {step}")

        # Second launch, the cluster written with a 'chief' job this time.
        (rc0, log0), (rc1, log1) = launch_cluster(self.data, logdir, "--max_steps=6",
                                                  "--checkpoint_every=4", "--valid_every=0",
                                                  chief_job=True)
        self.assertEqual(rc0, 0, log0[-3000:])
        self.assertEqual(rc1, 0, log1[-3000:])
        self.assertIn(f"resumed from {ckpt4} at step 4", log0)
        self.assertIn(f"resumed from {ckpt4} at step 4", log1)
        self.assertIn("RNN state and data position start afresh", log0)
        self.assertIn(f"saved checkpoint {os.path.join(logdir, 'checkpoints', 'ckpt-6')} at step 6", log0)
        self.assertEqual(glob.glob(os.path.join(logdir, "**", "workertemp_*"), recursive=True), [])

    def test_local_tf_configs_are_valid_and_distinct(self):
        for chief_job in (False, True):
            configs = [json.loads(c) for c in distribute.local_tf_configs(3, chief_job=chief_job)]
            for c in configs:
                distribute.parse_tf_config(json.dumps(c))
            addrs = [a for c in configs[:1] for job in c["cluster"].values() for a in job]
            self.assertLen(set(addrs), 3)
            self.assertEqual(configs[0]["task"]["type"], "chief" if chief_job else "worker")
            self.assertEqual(len({json.dumps(c["task"]) for c in configs}), 3)

    def test_bad_tf_config_is_a_clear_error(self):
        with self.assertRaisesRegex(UserError, "TF_CONFIG environment variable, which is not set"):
            distribute.parse_tf_config(None)
        for text, needle in (("{not json", "not valid JSON"),
                             ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "no cluster"),
                             ('{"cluster": {"worker": ["host"]}, "task": {"type": "worker", "index": 0}}',
                              "host:port"),
                             ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
                              "index within it"),
                             ('{"cluster": {"worker": ["h:1"], "ps": ["h:2"]}, "task": {"type": "ps", '
                              '"index": 0}}', "only 'chief' and 'worker'")):
            with self.assertRaisesRegex(UserError, needle, msg=text):
                distribute.parse_tf_config(text)
        distribute.parse_tf_config('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, '
                                   '"task": {"type": "worker", "index": 0}}')
        env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
        proc = subprocess.run([sys.executable, "-m", "samplernn_tf.train", f"--data_dir={self.data}",
                               f"--logdir={self.get_temp_dir()}/run", "--strategy=multi_worker"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("error: --strategy=multi_worker needs the cluster in the TF_CONFIG", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_batch_size_must_split_over_all_replicas(self):
        topo = distribute.Topology(num_workers=2, worker_index=0, is_chief=True, num_local_replicas=2)
        distribute.check_batch_size(8, topo)
        with self.assertRaisesRegex(ConfigError, r"^--batch_size: 6 is not divisible by the 4 "
                                                 r"replicas \(2 worker\(s\) x 2 device\(s\)\)"):
            distribute.check_batch_size(6, topo)


class MixedPrecisionTest(tf.test.TestCase):

    def test_bf16_converges_on_a_chord(self):
        keras.utils.set_random_seed(0)
        config = tiny(batch=8, seq_len=64, learning_rate=3e-3, mixed_precision="bf16")
        config = config.replace(model=ModelConfig(frame_sizes=(8, 2), dim=64, emb_size=16, q_levels=Q))
        trainer = Trainer(config)
        self.assertEqual(trainer.compute_dtype, "bfloat16")
        data = chord_batches(8, 64, 16)
        bits = [float(trainer.train_step(data[s % len(data)])["bits_per_sample"]) for s in range(200)]
        self.assertGreater(bits[0], 0.9 * math.log2(Q))
        self.assertLess(np.mean(bits[-10:]), 0.35 * math.log2(Q), bits[::20])
        self.assertTrue(all(np.isfinite(bits)))
        self.assertEqual(trainer.train_step.experimental_get_tracing_count(), 1)


if __name__ == "__main__":
    tf.test.main()
