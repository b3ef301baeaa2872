"""Prepared TFRecord shards: manifest, identical splits and batches to the raw path, resume,
bad files, settings checks, and the `python -m pipelines.prepare` binary."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines import audio
from pipelines import dataset
from pipelines import records
from pipelines import shard_writer
from samplernn_tf import training
from samplernn_tf.config import Config, ConfigError, DataConfig, ModelConfig
from tests import audio_fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(root):
    """Six files of different formats, rates, channels and lengths, and one bad file."""
    fx.write_wav(os.path.join(root, "a", "one.wav"), fx.sine(440, 0.30, 16000), 16000)
    fx.write_flac(os.path.join(root, "two.flac"), fx.sine(330, 0.45, 22050, channels=2), 22050)
    fx.write_wav(os.path.join(root, "a", "b", "three.wav"), fx.sine(200, 0.20, 8000), 8000, "PCM_24")
    fx.write_flac(os.path.join(root, "four.flac"), fx.sine(523, 0.25, 16000, amplitude=0.3), 16000)
    fx.write_wav(os.path.join(root, "five.wav"), fx.sine(660, 0.12, 44100), 44100, "FLOAT")
    fx.write_wav(os.path.join(root, "six.wav"), fx.sine(100, 0.33, 16000) + 0.1, 16000)
    fx.write_bytes(os.path.join(root, "bad.wav"), b"RIFF not really a wav file")


def make_config(q_levels=256, **data):
    return Config(model=ModelConfig(frame_sizes=(8, 2), dim=8, q_levels=q_levels),
                  data=DataConfig(seq_len=16, valid_fraction=0.2, test_fraction=0.2, **data))


def numpy_batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(n)]


def relative(splits, root):
    return {s: [os.path.relpath(p, root) for p in files] for s, files in splits.items()}


class RecordsTest(tf.test.TestCase, parameterized.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp()
        cls.raw = os.path.join(cls.tmp, "raw")
        write_corpus(cls.raw)
        cls.prepared = os.path.join(cls.tmp, "prepared")
        cls.manifest = shard_writer.prepare(cls.raw, cls.prepared, 16000, shard_seconds=0.5)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def test_manifest(self):
        m = records.read_manifest(self.prepared)
        self.assertEqual(m, self.manifest)
        self.assertEqual(m["settings"], {"sample_rate": 16000, "normalize": "peak", "remove_dc": True})
        self.assertEqual((m["input_type"], m["split_folders"]), ("directory", False))
        self.assertEqual(sorted(m["files"]), ["a/b/three.wav", "a/one.wav", "five.wav", "four.flac",
                                              "six.wav", "two.flac"])
        self.assertEqual(list(m["skipped"]), ["bad.wav"])
        self.assertIn("WAV", m["skipped"]["bad.wav"]["reason"])  # decode_files' reason
        seconds_and_rates = {"a/one.wav": (0.3, 16000), "two.flac": (0.45, 22050),
                             "a/b/three.wav": (0.2, 8000), "four.flac": (0.25, 16000),
                             "five.wav": (0.12, 44100), "six.wav": (0.33, 16000)}
        for file_id, (seconds, rate) in seconds_and_rates.items():
            n = -(-round(seconds * rate) * 16000 // rate)  # ceil(T * 16000 / rate)
            self.assertEqual(m["files"][file_id]["num_samples"], n)
            self.assertIsNone(m["files"][file_id]["split"])
        self.assertEqual(m["num_samples"], sum(f["num_samples"] for f in m["files"].values()))
        self.assertAlmostEqual(m["total_seconds"], m["num_samples"] / 16000)
        self.assertGreater(m["num_shards"], 2)
        listed = [i for s in m["shards"] for i in s["files"]]
        self.assertCountEqual(listed, m["files"])
        for k, s in enumerate(m["shards"]):
            self.assertEqual(os.path.getsize(os.path.join(self.prepared, s["name"])), s["bytes"])
            self.assertTrue(all(m["files"][i]["shard"] == k for i in s["files"]))
            if k < m["num_shards"] - 1:  # about shard_seconds each: over by less than one file
                self.assertGreaterEqual(s["seconds"], 0.5)
                self.assertLess(s["seconds"] - s["num_samples"][-1] / 16000, 0.5)

    @parameterized.parameters((0.2, 0.2, 0), (0.2, 0.2, 1), (0.34, 0.0, 5), (0.0, 0.5, 9))
    def test_same_split_as_raw(self, valid, test, seed):
        self.assertTrue(records.is_prepared(self.prepared))
        self.assertFalse(records.is_prepared(self.raw))
        raw = relative(dataset.find_splits(self.raw, valid, test, seed), self.raw)
        self.assertEqual(records.find_splits(self.prepared, valid, test, seed), raw)
        self.assertEqual(dataset.find_splits(self.prepared, valid, test, seed), raw)  # dispatch

    def test_split_folders_and_glob(self):
        root = os.path.join(self.get_temp_dir(), "folders")
        for split, names in (("train", ["a/one.wav", "two.flac", "bad.wav"]), ("valid", ["four.flac"]),
                             ("test", [])):
            os.makedirs(os.path.join(root, split), exist_ok=True)
            for name in names:
                dst = os.path.join(root, split, name)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copy(os.path.join(self.raw, name), dst)
        shutil.copy(os.path.join(self.raw, "six.wav"), root)  # outside the folders: not a split
        fx.write_bytes(os.path.join(root, "manifest.json"), b'{"some": "other manifest"}')
        self.assertFalse(records.is_prepared(root))
        out = os.path.join(self.get_temp_dir(), "folders_prepared")
        m = shard_writer.prepare(root, out, 16000, shard_seconds=100)
        self.assertTrue(m["split_folders"])
        self.assertEqual({i: f["split"] for i, f in m["files"].items()},
                         {"train/a/one.wav": "train", "train/two.flac": "train", "valid/four.flac": "valid"})
        self.assertEqual(m["skipped"]["train/bad.wav"]["split"], "train")
        raw = relative(dataset.find_splits(root, 0.3, 0.3, 0), root)
        self.assertEqual(raw["train"], ["train/a/one.wav", "train/bad.wav", "train/two.flac"])
        self.assertEqual(records.find_splits(out, 0.3, 0.3, 0), raw)

        pattern = os.path.join(self.raw, "*.wav")  # a glob: find_splits keys on the full paths
        out = os.path.join(self.get_temp_dir(), "glob_prepared")
        m = shard_writer.prepare(pattern, out, 16000)
        self.assertEqual(m["input_type"], "glob")
        self.assertEqual(sorted(m["files"]), ["five.wav", "six.wav"])
        for seed in range(4):
            raw = relative(dataset.find_splits(pattern, 0.3, 0.3, seed), self.raw)
            self.assertEqual(records.find_splits(out, 0.3, 0.3, seed), raw)

    def test_non_local_filesystem(self):
        # ram:// stands in for gs://: paths with a scheme, read and written through tf.io.gfile.
        names = ["two.flac", "a/one.wav", "a/b/three.wav", "six.wav"]
        for name in names:
            tf.io.gfile.makedirs(os.path.dirname(f"ram://records_raw/{name}"))
            tf.io.gfile.copy(os.path.join(self.raw, name), f"ram://records_raw/{name}", overwrite=True)
        m = shard_writer.prepare("ram://records_raw", "ram://records_prepared", 16000, shard_seconds=0.5)
        self.assertCountEqual(m["files"], names)
        self.assertTrue(records.is_prepared("ram://records_prepared"))
        for seed in range(3):
            raw = relative(dataset.find_splits("ram://records_raw", 0.25, 0.25, seed), "ram://records_raw")
            self.assertEqual(dataset.find_splits("ram://records_prepared", 0.25, 0.25, seed), raw)
        local = dict(records.decode_prepared(self.prepared, names))
        for name, x in records.decode_prepared("ram://records_prepared", names):
            self.assertAllEqual(x, local[name])

    @parameterized.parameters(("mu-law", 256), ("linear", 65536))
    def test_identical_codes(self, q_type, q_levels):
        config = make_config(q_levels, q_type=q_type)
        files = sorted(audio.list_audio_files(self.raw))
        ids = [os.path.relpath(p, self.raw) for p in files]
        raw = dataset.load_corpus(files, config)
        prepared = dataset.load_corpus(ids, config, prepared_dir=self.prepared)
        self.assertLen(prepared, 6)
        self.assertEqual(prepared.names, [os.path.relpath(n, self.raw) for n in raw.names])
        for a, b in zip(raw.codes, prepared.codes):
            self.assertEqual(a.dtype, b.dtype)
            self.assertAllEqual(a, b)

    def test_same_batches(self):
        config = make_config(65536, q_type="linear", chunk_seconds=0.2)  # finest codes
        raw = training.load_splits(self.raw, config)
        prepared = training.load_splits(self.prepared, config)
        for split in ("train", "valid"):
            self.assertEqual(len(raw[split]), len(prepared[split]))
            self.assertGreater(len(raw[split]), 0)
        for a, b in zip(numpy_batches(dataset.train_dataset(raw["train"], config, 3, seed=11), 16),
                        numpy_batches(dataset.train_dataset(prepared["train"], config, 3, seed=11), 16)):
            tf.nest.map_structure(self.assertAllEqual, a, b)
        (raw_ds, n), (prep_ds, m) = (dataset.eval_dataset(c["valid"], config, 2) for c in (raw, prepared))
        self.assertEqual(n, m)
        for a, b in zip(numpy_batches(raw_ds, n), numpy_batches(prep_ds, m)):
            tf.nest.map_structure(self.assertAllEqual, a, b)

    def test_bad_file_is_skipped_with_a_warning(self):
        with self.assertLogs("absl", "WARNING") as logs:
            out = records.decode_prepared(self.prepared, ["bad.wav", "four.flac"])
        self.assertEqual([i for i, _ in out], ["four.flac"])
        self.assertEqual(out[0][1].dtype, np.float32)
        self.assertTrue(any("bad.wav" in line for line in logs.output))
        with self.assertRaisesRegex(audio.AudioDecodeError, "bad.wav"):
            records.decode_prepared(self.prepared, ["four.flac", "bad.wav"], strict=True)
        with self.assertRaisesRegex(audio.AudioDecodeError, "bad.wav"):
            shard_writer.prepare(self.raw, os.path.join(self.get_temp_dir(), "strict"), 16000, strict=True)
        with self.assertRaisesRegex(FileNotFoundError, "nope.wav"):
            records.decode_prepared(self.prepared, ["nope.wav"])

    @parameterized.parameters(("sample_rate", 8000, "16000"), ("normalize", "none", "peak"),
                              ("remove_dc", False, "True"))
    def test_settings_mismatch_is_refused(self, flag, value, prepared_value):
        config = make_config(**{flag: value})
        with self.assertRaisesRegex(ConfigError, f"^--{flag}: .*{prepared_value}.*{value}"):
            dataset.load_corpus(["four.flac"], config, prepared_dir=self.prepared)

    def test_resume_keeps_complete_shards_and_redoes_missing_ones(self):
        out = os.path.join(self.get_temp_dir(), "resume")
        first = shard_writer.prepare(self.raw, out, 16000, shard_seconds=0.5)
        names = [s["name"] for s in first["shards"]]
        mtimes = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
        with self.assertLogs("absl", "INFO") as logs:
            again = shard_writer.prepare(self.raw, out, 16000, shard_seconds=0.5)
        self.assertEqual(again, first)
        self.assertEqual(sum("keeping complete shard" in line for line in logs.output), len(names))
        self.assertFalse(any("wrote shard" in line for line in logs.output))
        self.assertEqual({n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}, mtimes)

        # An interrupted run: one shard lost, a half-written temp file, no manifest.
        os.remove(os.path.join(out, names[1]))
        os.remove(os.path.join(out, records.MANIFEST))
        fx.write_bytes(os.path.join(out, names[2] + ".tmp-123"), b"partial")
        self.assertFalse(records.is_prepared(out))
        with self.assertLogs("absl", "INFO") as logs:
            again = shard_writer.prepare(self.raw, out, 16000, shard_seconds=0.5)
        self.assertEqual(again, first)
        written = [line for line in logs.output if "wrote shard" in line]
        self.assertLen(written, 1)
        self.assertIn(f"wrote {names[1]}:", written[0])
        self.assertTrue(all(n == names[1] or os.stat(os.path.join(out, n)).st_mtime_ns == mtimes[n]
                            for n in names))
        self.assertCountEqual([n for n in os.listdir(out) if n.startswith("shard-")], names)

        # Other settings: every shard is written again.
        other = shard_writer.prepare(self.raw, out, 8000, shard_seconds=0.5)
        self.assertEqual(other["settings"]["sample_rate"], 8000)
        self.assertTrue(all(os.stat(os.path.join(out, s["name"])).st_mtime_ns != mtimes.get(s["name"])
                            for s in other["shards"]))

    def test_binary(self):
        out = os.path.join(self.get_temp_dir(), "binary")
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
        run = subprocess.run(
            [sys.executable, "-m", "pipelines.prepare", f"--input={self.raw}", f"--output={out}",
             "--sample_rate=16000", "--normalize=peak", "--remove_dc", "--shard_seconds=0.5"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr)
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual((summary["num_files"], summary["num_skipped"]), (6, 1))
        self.assertIn("bad.wav", run.stderr)  # the skip warning names the file
        self.assertIn("prepare: 7/7 files", run.stderr)  # the progress line
        m = records.read_manifest(out)
        self.assertEqual(m["files"], self.manifest["files"])
        self.assertEqual(m["shards"], self.manifest["shards"])


if __name__ == "__main__":
    tf.test.main()
