"""Where a run keeps its checkpoints, and how other tools find and restore them.

Layout of a run directory (`--logdir`):
  config.json          the resolved Config
  checkpoints/ckpt-N   training checkpoints (model, optimizer, step, RNN state, data position)
  best/ckpt-N          model weights with the best validation bits per sample so far
  best.json            {"step": N, "valid_bits_per_sample": x}
  train/, valid/       TensorBoard event files

TensorFlow writes each checkpoint's data and index files before it updates the `checkpoint`
state file, so a run killed mid-save still points at the previous complete checkpoint.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging

CHECKPOINT_SUBDIR = "checkpoints"
BEST_SUBDIR = "best"
BEST_JSON = "best.json"


def checkpoint_dir(logdir: str) -> str:
    return os.path.join(logdir, CHECKPOINT_SUBDIR)


def best_dir(logdir: str) -> str:
    return os.path.join(logdir, BEST_SUBDIR)


def resolve(logdir: str, which: str = "best") -> str:
    """Finds a checkpoint path prefix.

    Args:
      logdir: a training run directory.
      which: 'best' (falls back to 'latest', with a log line, if the run never validated),
        'latest', or an explicit checkpoint path prefix or directory.

    Raises:
      FileNotFoundError: naming where it looked.
    """
    if which not in ("best", "latest"):
        path = tf.train.latest_checkpoint(which) if tf.io.gfile.isdir(which) else which
        if path and tf.io.gfile.exists(path + ".index"):
            return path
        raise FileNotFoundError(f"--checkpoint={which}: no checkpoint there (expected a path "
                                f"prefix such as {os.path.join(checkpoint_dir(logdir), 'ckpt-1000')})")
    if which == "best":
        path = tf.train.latest_checkpoint(best_dir(logdir))
        if path:
            return path
        logging.info("no best checkpoint in %s (the run has not validated yet); using the latest",
                     best_dir(logdir))
    path = tf.train.latest_checkpoint(checkpoint_dir(logdir))
    if not path:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(logdir)}: train first "
                                f"(python -m samplernn_tf.train --logdir={logdir} ...)")
    return path


def candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, newest first, even if its `checkpoint` file is damaged."""
    try:
        state = tf.train.get_checkpoint_state(directory)
    except (tf.errors.OpError, ValueError) as e:  # text-proto parse errors, unreadable file
        logging.warning("%s is damaged (%s); looking for checkpoint files directly",
                        os.path.join(directory, "checkpoint"), e)
        state = None
    if state is not None and state.all_model_checkpoint_paths:
        paths = list(state.all_model_checkpoint_paths)
    else:
        paths = [p[:-len(".index")] for p in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index"))]

    def number(p):
        tail = p.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    return sorted(paths, key=number, reverse=True)


def restore_latest_intact(manager: tf.train.CheckpointManager, restore) -> str | None:
    """Restores the newest checkpoint that reads back whole, falling back to older ones.

    A checkpoint cut short by a crash or damaged on disk fails to restore; it is reported with
    a warning naming its files and the previous one is tried.

    Args:
      manager: the run's CheckpointManager.
      restore: callable(path) that restores everything and raises if anything is missing.

    Returns:
      The restored path, or None if there is no checkpoint.

    Raises:
      RuntimeError: checkpoints exist but none can be restored.
    """
    paths = candidates(manager.directory)
    for path in paths:
        try:
            restore(path)
            return path
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (IndexError, DataLossError, ...)
            files = ", ".join(sorted(tf.io.gfile.glob(path + ".*"))) or path
            logging.warning("checkpoint %s is damaged or incomplete (%s: %s); falling back to the "
                            "previous one", files, type(e).__name__, str(e).splitlines()[0][:200])
    if paths:
        raise RuntimeError(f"no intact checkpoint in {manager.directory} ({len(paths)} damaged); "
                           f"move them away or use --overwrite to start afresh")
    return None


def restore_weights(model, path: str) -> int:
    """Restores only the model weights of a training or best checkpoint into `model`.

    Works for any batch size (RNN state and optimizer slots are not read).

    Returns:
      The checkpoint's global step, or -1 if it has none.

    Raises:
      ValueError: the checkpoint does not fit this model (another run's config?).
    """
    step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    ckpt = tf.train.Checkpoint(model=model, step=step)
    try:
        status = ckpt.read(path)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise ValueError(f"{path}: checkpoint does not match this model's config: {e}") from e
    status.expect_partial()
    return int(step.numpy())


def read_best(logdir: str) -> dict | None:
    path = os.path.join(logdir, BEST_JSON)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_best(logdir: str, step: int, valid_bits: float) -> None:
    path = os.path.join(logdir, BEST_JSON)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        json.dump({"step": int(step), "valid_bits_per_sample": float(valid_bits)}, f)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
