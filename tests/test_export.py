"""SavedModel export and the generate binary: round trips, no project import, serving requests."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from samplernn_tf import checkpoints, errors, evaluation, export, generation, quantization
from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig
from samplernn_tf.model import SampleRNN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
STEP = 42
Q = 32
# Ops that would make a signature stateful or non-deterministic.
FORBIDDEN_OPS = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "Assign",
                 "RandomUniform", "RandomStandardNormal", "Multinomial", "RandomShuffle",
                 "StatefulUniform", "StatefulStandardNormalV2", "RngReadAndSkip", "RngSkip"}


def make_run(logdir, config, seed=0, step=STEP):
    """A run directory with config.json and one training-style checkpoint of a random model."""
    keras.utils.set_random_seed(seed)
    model = SampleRNN(config.model)
    config.save(logdir)
    ckpt = tf.train.Checkpoint(model=model, step=tf.Variable(step, dtype=tf.int64))
    tf.train.CheckpointManager(ckpt, checkpoints.checkpoint_dir(logdir), max_to_keep=1).save(
        checkpoint_number=step)
    return model


def write_wav(path, audio, rate):
    tf.io.gfile.makedirs(os.path.dirname(path))
    tf.io.write_file(path, tf.audio.encode_wav(tf.constant(audio, tf.float32)[:, None], rate))


def read_wav(path):
    audio, rate = tf.audio.decode_wav(tf.io.read_file(path))
    return audio.numpy()[:, 0], int(rate)


def run(args, cwd=REPO, env=None):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


class ExportTest(tf.test.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tf.compat.v1.test.get_temp_dir() + "/export_test"
        cls.logdir = os.path.join(cls.root, "run")
        cls.export_dir = os.path.join(cls.root, "models")
        cls.config = Config(model=ModelConfig(frame_sizes=(8, 2), dim=32, emb_size=8, q_levels=Q),
                            data=DataConfig(seq_len=32), train=TrainConfig(batch_size=4))
        make_run(cls.logdir, cls.config)
        result = run([PYTHON, "-m", "samplernn_tf.export", f"--logdir={cls.logdir}",
                      f"--export_dir={cls.export_dir}"], env=clean_env())
        assert result.returncode == 0, result.stderr[-3000:]
        cls.summary = json.loads(result.stdout.strip().splitlines()[-1])
        cls.path = os.path.join(cls.export_dir, str(STEP))
        cls.loaded = tf.saved_model.load(cls.path)
        # The same weights, in process.
        cls.model = SampleRNN(cls.config.model)
        checkpoints.restore_weights(cls.model, checkpoints.resolve(cls.logdir, "best"))
        cls.gen = generation.Generator(cls.model, cls.config)

    def generate_inputs(self, n=40, rows=2, temperature=0.9, seed=3):
        return dict(num_samples=tf.constant(n, tf.int32), batch_size=tf.constant(rows, tf.int32),
                    temperature=tf.constant(temperature, tf.float32), seed=tf.constant(seed, tf.int64))

    def test_layout_version_and_config(self):
        self.assertEqual(self.summary["version"], STEP)
        self.assertEqual(self.summary["export_path"], self.path)
        self.assertEqual(sorted(os.listdir(self.export_dir)), [str(STEP)])  # no temp dir left
        for name in ("saved_model.pb", "variables", "assets/config.json", "assets/export.json"):
            self.assertTrue(os.path.exists(os.path.join(self.path, name)), name)
        info = export.read_export_info(self.path)
        self.assertEqual(info["step"], STEP)
        self.assertEqual(info["checkpoint"], self.summary["checkpoint"])
        with open(os.path.join(self.path, "assets", "config.json")) as f:
            self.assertEqual(Config.from_json(f.read()), self.config)
        info = {k: v.numpy() for k, v in self.loaded.signatures["config"]().items()}
        self.assertEqual(info["sample_rate"], 16000)
        self.assertEqual(info["q_levels"], Q)
        self.assertEqual(info["q_type"], b"mu-law")
        self.assertAllEqual(info["frame_sizes"], [8, 2])
        self.assertEqual(info["step"], STEP)
        self.assertEqual(Config.from_json(info["config_json"].decode()), self.config)
        self.assertCountEqual(self.loaded.signatures.keys(), export.SIGNATURES)

    def test_generate_and_continue_equal_in_process(self):
        out = self.loaded.signatures["generate"](**self.generate_inputs())
        audio, codes = self.gen.generate(40, batch_size=2, temperature=0.9, seed=3)
        self.assertAllEqual(out["codes"], codes)
        self.assertAllEqual(out["audio"], audio)
        default = self.loaded.signatures["serving_default"](**self.generate_inputs())
        self.assertAllEqual(default["codes"], codes)
        prime = np.random.default_rng(0).uniform(-1, 1, [2, 83]).astype(np.float32)
        out = self.loaded.signatures["continue"](prime=tf.constant(prime), **self.generate_inputs())
        _, codes = self.gen.generate(40, batch_size=2, temperature=0.9, seed=3, prime=prime)
        self.assertAllEqual(out["codes"], codes)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "at least 8 samples"):
            self.loaded.signatures["continue"](prime=tf.zeros([1, 5]), **self.generate_inputs())
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "temperature must be > 0"):
            self.loaded.signatures["generate"](**self.generate_inputs(temperature=0.0))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "num_samples must be positive"):
            self.loaded.signatures["generate"](**self.generate_inputs(n=-1))

    def test_score_equals_the_evaluate_binary(self):
        from pipelines import dataset as dataset_lib
        from samplernn_tf import evaluate
        rng = np.random.default_rng(1)
        t = np.arange(700) / 16000.0
        clips = [0.6 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.normal(size=t.shape),
                 0.3 * rng.normal(size=t.shape)]
        data_dir = os.path.join(self.root, "data")
        paths = [os.path.join(data_dir, "test", f"clip{i}.wav") for i in range(2)]
        for path, clip in zip(paths, clips):
            write_wav(path, np.clip(clip, -1, 1), 16000)
        for split in ("train", "valid"):
            tf.io.gfile.makedirs(os.path.join(data_dir, split))
        audio = np.stack([read_wav(p)[0] for p in paths])  # exactly what the decoder reads
        bits = self.loaded.signatures["score"](audio=tf.constant(audio))["nll_bits_per_sample"].numpy()
        self.assertEqual(bits.shape, (2,))
        # Both files are as long: the pooled figure of the evaluate binary is the mean of rows.
        result = evaluate.evaluate_split(self.logdir, data_dir, "test", batch_size=2)
        self.assertEqual(result["num_samples"], 1400)
        self.assertAllClose(bits.mean(), result["nll_bits_per_sample"], rtol=1e-5)
        corpus = dataset_lib.load_corpus(paths[:1], self.config)
        one = evaluation.Evaluator(self.model).evaluate(corpus, self.config, batch_size=1)
        self.assertAllClose(bits[0], one["nll_bits_per_sample"], rtol=1e-5)
        self.assertAllClose(self.gen.score(audio), bits, rtol=1e-6)

    def test_signatures_are_stateless(self):
        # Every op any signature can run: its graph and the functions it calls. (The SavedModel's
        # own restore graph assigns variables at load time; no signature does.)
        ops = set()
        for name in export.SIGNATURES:
            graph_def = self.loaded.signatures[name].graph.as_graph_def()
            ops |= {node.op for node in graph_def.node}
            ops |= {node.op for f in graph_def.library.function for node in f.node_def}
        self.assertIn("ReadVariableOp", ops)
        self.assertEmpty(ops & FORBIDDEN_OPS)
        before = [v.numpy() for v in self.loaded.weights]
        a = self.loaded.signatures["generate"](**self.generate_inputs())["codes"]
        b = self.loaded.signatures["generate"](**self.generate_inputs())["codes"]
        self.assertAllEqual(a, b)
        for x, v in zip(before, self.loaded.weights):
            self.assertAllEqual(x, v.numpy())

    def test_reloads_without_the_project(self):
        reference = self.gen.generate(24, batch_size=1, temperature=1.0, seed=5)[1]
        code = f"""
import json, sys
import numpy as np, tensorflow as tf
m = tf.saved_model.load({self.path!r})
out = m.signatures["generate"](num_samples=tf.constant(24), batch_size=tf.constant(1),
                               temperature=tf.constant(1.0), seed=tf.constant(5, tf.int64))
score = m.signatures["score"](audio=tf.zeros([1, 50]))["nll_bits_per_sample"]
rate = int(m.signatures["config"]()["sample_rate"])
mods = [k for k in sys.modules if k.split(".")[0] in ("samplernn_tf", "pipelines", "flags", "tests")]
print(json.dumps({{"codes": out["codes"].numpy().tolist(), "rate": rate, "mods": mods,
                  "score": float(score[0])}}))
"""
        result = run([PYTHON, "-I", "-c", code], cwd=self.root, env=clean_env())
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        out = json.loads(result.stdout.strip().splitlines()[-1])
        self.assertEqual(out["mods"], [])
        self.assertEqual(out["rate"], 16000)
        self.assertAllEqual(out["codes"], reference)
        self.assertAllClose(out["score"], self.gen.score(np.zeros([1, 50], np.float32))[0], rtol=1e-5)

    def test_saved_model_cli_run(self):
        outdir = os.path.join(self.root, "cli_out")
        cli = os.path.join(os.path.dirname(PYTHON), "saved_model_cli")
        result = run([cli, "run", "--dir", self.path, "--tag_set", "serve", "--signature_def",
                      "generate", "--input_exprs",
                      "num_samples=24;batch_size=2;temperature=0.9;seed=3",
                      "--outdir", outdir, "--overwrite"],
                     cwd=self.root, env=clean_env())
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        codes = np.load(os.path.join(outdir, "codes.npy"))
        self.assertAllEqual(codes, self.gen.generate(24, batch_size=2, temperature=0.9, seed=3)[1])

    def test_predict_request(self):
        try:
            from tensorflow_serving.apis import predict_pb2
        except ImportError:
            self.skipTest("tensorflow-serving-api is not installed (pip install '.[serving]')")
        signature = self.loaded.signatures["generate"]
        specs = signature.structured_input_signature[1]
        values = {"num_samples": 32, "batch_size": 2, "temperature": 0.8, "seed": 9}
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "samplernn"
        request.model_spec.signature_name = "generate"
        for name, spec in specs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values[name], dtype=spec.dtype))
        wire = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        self.assertEqual(wire.model_spec.signature_name, "generate")
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in wire.inputs.items()}
        out = signature(**inputs)
        self.assertAllEqual(out["codes"], self.gen.generate(32, batch_size=2, temperature=0.8, seed=9)[1])

    def test_versions_and_an_existing_version(self):
        self.assertEqual(export.resolve_version(self.export_dir, "step", STEP), STEP)
        self.assertEqual(export.resolve_version(self.export_dir, "next", STEP), STEP + 1)
        self.assertEqual(export.resolve_version(self.export_dir, "7", STEP), 7)
        self.assertEqual(export.resolve_version(os.path.join(self.root, "none"), "next", STEP), 1)
        with self.assertRaisesRegex(errors.UserError, "--version=x"):
            export.resolve_version(self.export_dir, "x", STEP)
        # The same checkpoint again: a no-op that returns the existing export.
        again = export.export_run(self.logdir, self.export_dir)
        self.assertTrue(again["reused"])
        self.assertEqual(export.export_saved_model(self.logdir, self.export_dir), self.path)
        other = os.path.join(self.root, "other_models")
        tf.io.gfile.makedirs(os.path.join(other, "7"))
        with self.assertRaisesRegex(errors.UserError, "already exists and holds another export"):
            export.export_run(self.logdir, other, version="7")
        with self.assertRaisesRegex(FileNotFoundError, "no checkpoint"):
            empty = os.path.join(self.root, "empty_run")
            self.config.save(empty)
            export.export_run(empty, self.export_dir)


class GenerateBinaryTest(tf.test.TestCase):

    def test_writes_wavs_primed_from_another_rate_and_reports_errors(self):
        from samplernn_tf import generate
        root = self.get_temp_dir()
        logdir, out = os.path.join(root, "run"), os.path.join(root, "out")
        config = Config(model=ModelConfig(frame_sizes=(8, 2), dim=32, emb_size=8, q_levels=Q),
                        data=DataConfig(seq_len=32), train=TrainConfig(batch_size=4))
        model = make_run(logdir, config, seed=3)
        prime_path = os.path.join(root, "prime8k.wav")
        t = np.arange(400) / 8000.0
        write_wav(prime_path, 0.5 * np.sin(2 * np.pi * 300 * t), 8000)
        bad_path = os.path.join(root, "bad.wav")
        with open(bad_path, "wb") as f:
            f.write(b"RIFF not really a wav file")
        base = [PYTHON, "-m", "samplernn_tf.generate", f"--logdir={logdir}", f"--output_dir={out}",
                "--num_seqs=2", "--num_samples=100", "--temperature=0.9", "--seed=1",
                "--chunk_seconds=0.002"]
        result = run(base + [f"--prime_audio={prime_path}"], env=clean_env())
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertIn("samples/s", result.stderr)
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        names = sorted(os.path.basename(p) for p in summary["files"])
        self.assertEqual(names, ["step42_t0.90_seed1_primed_000.wav", "step42_t0.90_seed1_primed_001.wav"])
        gen = generation.Generator(model, config)
        prime = generate.load_prime(prime_path, config)
        self.assertEqual(len(prime), 800)  # resampled to 16 kHz
        _, codes = gen.generate(100, batch_size=2, temperature=0.9, seed=1, prime=prime)
        for i, path in enumerate(summary["files"]):
            audio, rate = read_wav(path)
            self.assertEqual(rate, 16000)
            self.assertAllEqual(quantization.encode(audio, "mu-law", Q), codes[i])

        files = generate.generate_files(logdir, os.path.join(root, "out2"), seconds=0.004, seed=2)
        self.assertEqual([os.path.basename(f) for f in files], ["step42_t1.00_seed2_000.wav"])
        self.assertEqual(read_wav(files[0])[0].shape, (64,))

        # The two user errors, in parallel: exit status 2 and one clear line.
        empty = os.path.join(root, "empty")
        config.save(empty)
        procs = [subprocess.Popen(args, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for args in (base + [f"--prime_audio={bad_path}"],
                              [PYTHON, "-m", "samplernn_tf.generate", f"--logdir={empty}",
                               f"--output_dir={out}"])]
        outs = [p.communicate(timeout=300) for p in procs]  # reads the pipes while waiting
        (bad_rc, bad_err), (empty_rc, empty_err) = [(p.returncode, o[1]) for p, o in zip(procs, outs)]
        self.assertEqual(bad_rc, 2, bad_err[-2000:])
        self.assertIn(f"error: {bad_path}:", bad_err)
        self.assertEqual(empty_rc, 2, empty_err[-2000:])
        self.assertIn("error: no checkpoint in", empty_err)
