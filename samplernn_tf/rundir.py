"""The run directory of a training job: config check, the lock, checkpoint-state repair.

Only the chief of a multi-worker job writes here (config.json, the lock, checkpoints,
summaries); other workers check the config read-only and write nowhere but their temporary
checkpoint directories.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import tensorflow as tf
from absl import logging

from samplernn_tf import checkpoints
from samplernn_tf.config import Config, ConfigError
from samplernn_tf.errors import UserError

LOCK_FILE = "trainer.lock"
STATE_FILE = "checkpoint"  # tf.train.CheckpointManager's state file in checkpoints/


def config_differences(old: Config, new: Config) -> list[str]:
    """Fields of the model and data sections that differ (those that make old checkpoints unusable)."""
    diffs = []
    for section in ("model", "data"):
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if f.name == "strict":
                continue
            if getattr(a, f.name) != getattr(b, f.name):
                diffs.append(f"--{f.name}: {getattr(a, f.name)} in the run, {getattr(b, f.name)} now")
    return diffs


def check_logdir(logdir: str, config: Config, overwrite: bool) -> list[str]:
    """Read-only half of `prepare_logdir`: the differences with the run in `logdir`, if any.

    Raises:
      ConfigError: the logdir holds a run with another model or data setup (unless overwrite).
    """
    if not tf.io.gfile.exists(os.path.join(logdir, "config.json")):
        return []
    diffs = config_differences(Config.load(logdir), config)
    if diffs and not overwrite:
        raise ConfigError(f"--logdir={logdir} holds a run with a different setup; use another "
                          f"--logdir, or --overwrite to start it afresh. Differences: "
                          + "; ".join(diffs))
    return diffs


def prepare_logdir(logdir: str, config: Config, overwrite: bool) -> None:
    """Checks that `logdir` is free for this config, then writes config.json.

    With --overwrite and a different setup, the old checkpoints are moved aside, not deleted.

    Raises:
      ConfigError: the logdir holds a run with another model or data setup (unless overwrite).
    """
    tf.io.gfile.makedirs(logdir)
    if check_logdir(logdir, config, overwrite):
        stamp = int(time.time())
        stale = checkpoints.checkpoint_dir(logdir)
        if tf.io.gfile.exists(stale):
            moved = f"{stale}.replaced-{stamp}"
            tf.io.gfile.rename(stale, moved)
            logging.warning("--overwrite: moved the old run's checkpoints to %s", moved)
        best = checkpoints.best_dir(logdir)
        if tf.io.gfile.exists(best):
            tf.io.gfile.rename(best, f"{best}.replaced-{stamp}")
        best_json = os.path.join(logdir, checkpoints.BEST_JSON)
        if tf.io.gfile.exists(best_json):
            tf.io.gfile.rename(best_json, f"{best_json}.replaced-{stamp}")
    config.save(logdir)


class LogdirLock:
    """Refuses a second trainer on one logdir; a stale lock from a dead process is taken over.

    The lock file holds 'hostname:pid'. Liveness can only be checked on the same host: a lock
    left by another host is taken over with a warning, so that a job restarted elsewhere after
    a preemption can continue (two live trainers on two hosts are not detected).
    """

    def __init__(self, logdir: str):
        self.path = os.path.join(logdir, LOCK_FILE)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    def __enter__(self):
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path) as f:
                holder = f.read().strip()
            host, _, pid = holder.partition(":")
            if host == socket.gethostname() and pid.isdigit() and _alive(int(pid)):
                raise UserError(f"{self.path}: another trainer (pid {pid}) is using this logdir; "
                                f"stop it or choose another --logdir")
            logging.warning("taking over a stale lock %s left by %s%s", self.path, holder or "?",
                            "" if host == socket.gethostname() else " (another host: not checked)")
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(self.owner)
        return self

    def __exit__(self, *exc):
        try:
            tf.io.gfile.remove(self.path)
        except tf.errors.NotFoundError:
            pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child of ours that nobody reaped is a zombie: dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _number(prefix: str) -> int:
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def repair_checkpoint_state(directory: str) -> None:
    """Rebuilds a damaged `checkpoint` state file from the checkpoint files on disk.

    A state file that does not parse, names no checkpoint, or lists checkpoints whose files are
    gone is moved aside (`checkpoint.damaged-<time>`) and rewritten to list every
    `ckpt-N.index` found, oldest first; `checkpoints.restore_latest_intact` then tries them
    newest first, and the CheckpointManager keeps deleting old ones as usual.
    """
    path = os.path.join(directory, STATE_FILE)
    if not tf.io.gfile.exists(path):
        return
    on_disk = sorted((p[:-len(".index")] for p in tf.io.gfile.glob(os.path.join(directory, "ckpt-*.index"))),
                     key=_number)
    problem = None
    try:
        state = tf.train.get_checkpoint_state(directory)
        if state is None:
            problem = "it does not parse"
        else:
            missing = [p for p in state.all_model_checkpoint_paths
                       if not tf.io.gfile.exists(p + ".index")]
            if missing:
                problem = f"it lists checkpoints that are not on disk ({', '.join(missing)})"
    except Exception as e:  # noqa: BLE001 - ValueError (names none), UnicodeDecodeError, OpError...
        problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    if problem is None:
        return
    moved = f"{path}.damaged-{int(time.time())}"
    tf.io.gfile.rename(path, moved, overwrite=True)
    if on_disk:
        # With their file times, so that the CheckpointManager deletes them in turn as usual.
        times = [tf.io.gfile.stat(p + ".index").mtime_nsec / 1e9 for p in on_disk]
        tf.compat.v1.train.update_checkpoint_state(
            directory, os.path.basename(on_disk[-1]),
            all_model_checkpoint_paths=[os.path.basename(p) for p in on_disk],
            all_model_checkpoint_timestamps=times, last_preserved_timestamp=min(times) - 1.0)
    logging.warning("%s is damaged (%s): moved it to %s and rebuilt it from the %d checkpoint(s) "
                    "on disk", path, problem, moved, len(on_disk))


class NullWriters:
    """Stands in for `summaries.Writers` on non-chief workers: writes nothing."""

    def scalar(self, *args, **kwargs):
        pass

    def scalars(self, *args, **kwargs):
        pass

    def audio(self, *args, **kwargs):
        pass

    def hparams(self, *args, **kwargs):
        pass

    def flush(self):
        pass


def remove_dir(path: str) -> None:
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)

