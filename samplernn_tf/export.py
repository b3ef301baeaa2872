"""Exports a trained run as a SavedModel for TensorFlow Serving (or `tf.saved_model.load`).

    python -m samplernn_tf.export --logdir=RUN --export_dir=/models/samplernn [--checkpoint=best]

Writes `<export_dir>/<version>/` (saved_model.pb, variables/, assets/config.json), the layout
TF Serving watches: it serves the highest integer version. The version is the checkpoint's
global step by default (`--version=step`), so a later checkpoint exports to a higher version;
`--version=next` takes the next free integer, `--version=N` a given one. The directory is
written under a temporary name and renamed when complete, so a server never sees half of it.

Signatures (all stateless; no signature assigns a variable):
  serving_default, generate:
      num_samples int32 [], batch_size int32 [], temperature float32 [], seed int64 []
      -> audio float32 [batch, num_samples] in [-1, 1], codes int32 [batch, num_samples]
  continue:
      the same plus prime float32 [1 or batch, time] (audio at the model rate, time >= one top
      frame) -> audio, codes: the continuation after the prime
  score:
      audio float32 [batch, time] -> nll_bits_per_sample float32 [batch], as
      `python -m samplernn_tf.evaluate` computes it for that audio as one file per row
  config:
      () -> sample_rate, q_type, q_levels, frame_sizes, seq_len, normalize, remove_dc, step,
      config_json (the whole run config)

Exporting the checkpoint a version directory already holds again is a no-op; another export
in an existing version directory is an error unless --overwrite.

The last line the binary prints is one JSON object: export_path, version, checkpoint, step,
signatures, reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from samplernn_tf import errors

FLAGS = flags.FLAGS

SIGNATURES = ("serving_default", "generate", "continue", "score", "config")
EXPORT_INFO = "export.json"  # asset: which checkpoint (path, step) the export holds


class ServingModule(tf.Module):
    """The exported object: model weights, the config asset and the signature functions.

    Args:
      model: a SampleRNN with the trained weights (built with batch_size=None).
      config: the run's Config.
      step: the checkpoint's global step (reported by the `config` signature).
      jit: XLA-compile the generation loop body; None = the Generator's rule (auto).
    """

    def __init__(self, model, config, step: int, jit: bool | None = None,
                 frames_per_call: int | None = None, checkpoint: str = ""):
        super().__init__(name="samplernn_serving")
        from samplernn_tf import generation_core
        self._core = generation_core.GenerationCore(
            model, config, jit=jit,
            frames_per_call=frames_per_call or generation_core.DEFAULT_FRAMES_PER_CALL)
        # The underlying tf.Variables: the functions capture these, so they must be tracked here.
        self.weights = [v.value for v in model.weights]
        self._config_json = config.to_json()
        self._tmp = tempfile.mkdtemp(prefix="samplernn_export_")
        path = os.path.join(self._tmp, "config.json")
        with open(path, "w") as f:
            f.write(self._config_json + "\n")
        self.config_asset = tf.saved_model.Asset(path)
        path = os.path.join(self._tmp, EXPORT_INFO)
        with open(path, "w") as f:
            json.dump({"checkpoint": checkpoint, "step": int(step), "jit": jit}, f)
        self.export_info_asset = tf.saved_model.Asset(path)
        m, d = config.model, config.data
        self._info = {
            "sample_rate": tf.constant(d.sample_rate, tf.int32),
            "q_type": tf.constant(d.q_type),
            "q_levels": tf.constant(m.q_levels, tf.int32),
            "frame_sizes": tf.constant(list(m.frame_sizes), tf.int32),
            "seq_len": tf.constant(d.seq_len, tf.int32),
            "normalize": tf.constant(d.normalize),
            "remove_dc": tf.constant(d.remove_dc),
            "step": tf.constant(step, tf.int64),
            "config_json": tf.constant(self._config_json),
        }
        scalar = lambda dtype, name: tf.TensorSpec([], dtype, name=name)  # noqa: E731
        gen_spec = [scalar(tf.int32, "num_samples"), scalar(tf.int32, "batch_size"),
                    scalar(tf.float32, "temperature"), scalar(tf.int64, "seed")]
        self.generate = tf.function(self._generate, input_signature=gen_spec)
        self.continue_ = tf.function(self._continue, input_signature=gen_spec + [
            tf.TensorSpec([None, None], tf.float32, name="prime")])
        self.score = tf.function(self._score, input_signature=[
            tf.TensorSpec([None, None], tf.float32, name="audio")])
        self.config = tf.function(self._config, input_signature=[])

    def _generate(self, num_samples, batch_size, temperature, seed):
        out = self._core.generate(num_samples, batch_size, temperature, seed)
        return {"audio": out["audio"], "codes": out["codes"]}

    def _continue(self, num_samples, batch_size, temperature, seed, prime):
        out = self._core.generate(num_samples, batch_size, temperature, seed, prime=prime)
        return {"audio": out["audio"], "codes": out["codes"]}

    def _score(self, audio):
        return {"nll_bits_per_sample": self._core.score(audio)}

    def _config(self):
        return dict(self._info)

    def signatures(self) -> dict:
        return {"serving_default": self.generate, "generate": self.generate,
                "continue": self.continue_, "score": self.score, "config": self.config}


def _next_version(export_dir: str) -> int:
    if not tf.io.gfile.isdir(export_dir):
        return 1
    used = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir) if n.rstrip("/").isdigit()]
    return max(used, default=0) + 1


def resolve_version(export_dir: str, version: str, step: int) -> int:
    """'step' (the checkpoint step; 'next' if it has none), 'next', or a positive integer."""
    if version == "step":
        return step if step > 0 else _next_version(export_dir)
    if version == "next":
        return _next_version(export_dir)
    try:
        v = int(version)
    except ValueError:
        v = 0
    if v <= 0:
        raise errors.UserError(f"--version={version}: expected 'step', 'next' or a positive integer")
    return v


def save(module: ServingModule, path: str) -> None:
    """Writes the SavedModel to `path` atomically (temporary sibling, then rename)."""
    parent = os.path.dirname(os.path.normpath(path)) or "."
    tf.io.gfile.makedirs(parent)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(os.path.normpath(path))}-{os.getpid()}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    # Gradients are not served: do not trace the RNNs' custom gradients into the SavedModel.
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(module, tmp, signatures=module.signatures(), options=options)
    tf.io.gfile.rename(tmp, path)
    shutil.rmtree(module._tmp, ignore_errors=True)  # the asset sources, copied into the export


def read_export_info(path: str) -> dict | None:
    """The `assets/export.json` of an export directory ({'checkpoint', 'step', 'jit'}), or None."""
    info = os.path.join(path, "assets", EXPORT_INFO)
    if not tf.io.gfile.exists(info):
        return None
    with tf.io.gfile.GFile(info) as f:
        return json.load(f)


def export_saved_model(logdir: str, export_dir: str, checkpoint: str = "best",
                       version: str = "step", jit: bool | None = None,
                       overwrite: bool = False) -> str:
    """Exports a run's checkpoint to `<export_dir>/<version>` and returns that path.

    See `export_run`.
    """
    return export_run(logdir, export_dir, checkpoint, version, jit, overwrite)["export_path"]


def export_run(logdir: str, export_dir: str, checkpoint: str = "best", version: str = "step",
               jit: bool | None = None, overwrite: bool = False) -> dict:
    """Restores a run's checkpoint and exports it to `<export_dir>/<version>`.

    Exporting the same checkpoint to the version that already holds it is a no-op (a re-run
    of a job does not fail); any other existing version directory is an error unless
    `overwrite` (then it is replaced: avoid that under a running server).

    Returns:
      {'export_path', 'version', 'checkpoint', 'step', 'signatures', 'reused'}.

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      errors.UserError: the version directory holds another export, or a bad version.
    """
    from samplernn_tf import checkpoints
    from samplernn_tf.config import Config
    from samplernn_tf.model import SampleRNN

    config = Config.load(logdir)
    path = checkpoints.resolve(logdir, checkpoint)
    model = SampleRNN(config.model)
    try:
        step = checkpoints.restore_weights(model, path)
    except ValueError as e:
        raise errors.UserError(str(e)) from e
    v = resolve_version(export_dir, version, step)
    target = os.path.join(export_dir, str(v))
    result = {"export_path": target, "version": v, "checkpoint": path, "step": step,
              "signatures": list(SIGNATURES), "reused": False}
    if tf.io.gfile.exists(target):
        info = read_export_info(target)
        if not overwrite and info and info.get("checkpoint") == path and info.get("step") == step:
            logging.info("%s already holds %s (step %d); not exporting again", target, path, step)
            return {**result, "reused": True}
        if not overwrite:
            raise errors.UserError(
                f"{target} already exists and holds another export "
                f"({(info or {}).get('checkpoint', 'unknown checkpoint')}); pass --version=next, "
                f"another --version, or --overwrite")
        tf.io.gfile.rmtree(target)
    module = ServingModule(model, config, step, jit=jit, checkpoint=path)
    logging.info("exporting %s (step %d) to %s", path, step, target)
    save(module, target)
    return result


def main(argv):
    del argv
    from flags import export as export_flags
    with errors.exit_on_user_error():
        from samplernn_tf import cli
        cli.setup()
        result = export_run(FLAGS.logdir, FLAGS.export_dir, FLAGS.checkpoint, FLAGS.version,
                            export_flags.jit_from_flag(FLAGS.jit), FLAGS.overwrite)
        print(json.dumps(result))


if __name__ == "__main__":
    from flags import export as _export_flags
    _export_flags.define_flags()
    app.run(main)
