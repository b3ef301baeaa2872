"""The training job: data, trainer, checkpoints, validation, TensorBoard, clean exits.

`run(...)` is what `python -m samplernn_tf.train` calls; it takes configs and paths, never
flags. Running it again on the same logdir resumes from the latest checkpoint: model,
optimizer, step, every row's RNN state and the data position, so the loss curve continues
as if the run had never stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import time

import keras
import tensorflow as tf
from absl import logging

from pipelines import dataset as dataset_lib
from pipelines import records
from samplernn_tf import checkpoints
from samplernn_tf import evaluation
from samplernn_tf import summaries
from samplernn_tf.config import Config, ConfigError
from samplernn_tf.errors import UserError

LOCK_FILE = "trainer.lock"


@dataclasses.dataclass
class RunResult:
    step: int
    train_bits_per_sample: float
    best_valid_bits_per_sample: float | None
    stopped_because: str
    valid_history: list  # [(step, valid bits per sample)] of this invocation


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


def prepare_logdir(logdir: str, config: Config, overwrite: bool) -> None:
    """Checks that `logdir` is free for this config, then writes config.json.

    Raises:
      ConfigError: the logdir holds a run with another model or data setup (unless overwrite).
    """
    tf.io.gfile.makedirs(logdir)
    if tf.io.gfile.exists(os.path.join(logdir, "config.json")):
        old = Config.load(logdir)
        diffs = config_differences(old, config)
        if diffs and not overwrite:
            raise ConfigError(f"--logdir={logdir} holds a run with a different setup; use another "
                              f"--logdir, or --overwrite to start it afresh. Differences: "
                              + "; ".join(diffs))
        if diffs:
            stale = checkpoints.checkpoint_dir(logdir)
            if tf.io.gfile.exists(stale):
                moved = f"{stale}.replaced-{int(time.time())}"
                tf.io.gfile.rename(stale, moved)
                logging.warning("--overwrite: moved the old run's checkpoints to %s", moved)
            best = checkpoints.best_dir(logdir)
            if tf.io.gfile.exists(best):
                tf.io.gfile.rename(best, f"{best}.replaced-{int(time.time())}")
    config.save(logdir)


class LogdirLock:
    """Refuses a second trainer on one logdir (a stale lock from a dead process is taken over)."""

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
            logging.warning("taking over a stale lock %s left by %s", self.path, holder)
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(self.owner)
        return self

    def __exit__(self, *exc):
        try:
            tf.io.gfile.remove(self.path)
        except tf.errors.NotFoundError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked between steps, so the exit checkpoint is clean."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.received = signal.Signals(signum).name
        logging.warning("%s received: saving a checkpoint and stopping after this step", self.received)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def load_splits(data_dir: str, config: Config) -> dict[str, dataset_lib.Corpus]:
    """Finds and decodes the train and valid splits, logging what was found."""
    d = config.data
    files = dataset_lib.find_splits(data_dir, d.valid_fraction, d.test_fraction, d.split_seed)
    corpora = {}
    prepared_dir = data_dir if records.is_prepared(data_dir) else None
    for split in ("train", "valid"):
        corpus = dataset_lib.load_corpus(files[split], config, prepared_dir=prepared_dir)
        corpora[split] = corpus
        logging.info("%s: %d files found, %d usable items, %.1f s of audio, %d windows of %d samples",
                     split, len(files[split]), len(corpus), corpus.seconds,
                     corpus.num_windows(d.seq_len) if len(corpus) else 0, d.seq_len)
    if len(corpora["train"]) == 0:
        raise dataset_lib.NoAudioError(
            f"--data_dir={data_dir}: no usable training audio ({len(files['train'])} train files "
            f"found, none could be decoded; see the warnings above)")
    return corpora


def run(config: Config, data_dir: str, logdir: str, *, time_limit_minutes: float = 0.0,
        valid_batch_size: int = 32, overwrite: bool = False) -> RunResult:
    """Trains until `config.train.max_steps`, the time limit, early stopping, or a signal."""
    from samplernn_tf import trainer as trainer_lib  # heavy: keep `import training` cheap

    tc = config.train
    previous = Config.load(logdir) if tf.io.gfile.exists(os.path.join(logdir, "config.json")) else None
    prepare_logdir(logdir, config, overwrite)
    with LogdirLock(logdir), _StopSignals() as stop:
        corpora = load_splits(data_dir, config)
        keras.utils.set_random_seed(tc.seed)
        trainer = trainer_lib.Trainer(config)
        train_ds = dataset_lib.train_dataset(corpora["train"], config, tc.batch_size, tc.seed)
        iterator = iter(train_ds)
        ckpt = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                   step=trainer.step, data=iterator,
                                   rnn_state=list(tf.nest.flatten(trainer.model.state_variables)))
        manager = tf.train.CheckpointManager(ckpt, checkpoints.checkpoint_dir(logdir),
                                             max_to_keep=tc.keep_checkpoints)
        best_ckpt = tf.train.Checkpoint(model=trainer.model, step=trainer.step)
        best_manager = tf.train.CheckpointManager(best_ckpt, checkpoints.best_dir(logdir), max_to_keep=1)
        same_rows = previous is None or (previous.train.batch_size, previous.train.seed) == (
            tc.batch_size, tc.seed)
        # Rows and data order differ otherwise: keep the weights, optimizer and step only.
        partial = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                      step=trainer.step)
        restored = checkpoints.restore_latest_intact(
            manager, (lambda p: ckpt.restore(p).assert_consumed()) if same_rows else
            (lambda p: partial.read(p).expect_partial()))
        if restored:
            if not same_rows:
                logging.info("--batch_size or --seed changed: RNN state and data order start afresh")
            logging.info("resumed from %s at step %d", restored, int(trainer.step))
        else:
            logging.info("starting a new run in %s", logdir)

        writers = summaries.Writers(logdir)
        writers.hparams(config)
        evaluator = evaluation.Evaluator(trainer.model)
        best = checkpoints.read_best(logdir)
        best_bits = best["valid_bits_per_sample"] if best else None
        stale_validations = 0
        last_validated = -1
        history = []
        samples_per_step = tc.batch_size * config.data.seq_len
        deadline = time.time() + time_limit_minutes * 60 if time_limit_minutes > 0 else None

        def save(reason):
            path = manager.save(checkpoint_number=int(trainer.step))
            logging.info("saved checkpoint %s at step %d (%s)", path, int(trainer.step), reason)

        def validate(step):
            nonlocal best_bits, stale_validations, last_validated
            last_validated = step
            result = evaluator.evaluate(corpora["valid"], config, valid_batch_size)
            bits = result["nll_bits_per_sample"]
            history.append((step, bits))
            writers.scalar("valid", "bits_per_sample", bits, step)
            if best_bits is None or bits < best_bits:
                best_bits, stale_validations = bits, 0
                best_manager.save(checkpoint_number=step)
                checkpoints.write_best(logdir, step, bits)
            else:
                stale_validations += 1
            logging.info("step %d: valid %.4f bits/sample (best %.4f)", step, bits, best_bits)

        stopped = "max_steps"
        last_bits = float("nan")
        window_start, window_steps = time.time(), 0
        run_start_step = int(trainer.step)
        run_start = time.time()
        step = run_start_step
        try:
            while step < tc.max_steps:
                metrics = trainer.train_step(next(iterator))
                step = int(trainer.step)
                window_steps += 1
                if tc.log_every and step % tc.log_every == 0 or step == tc.max_steps:
                    last_bits = float(metrics["bits_per_sample"])
                    elapsed = time.time() - window_start
                    rate = window_steps * samples_per_step / max(elapsed, 1e-9)
                    steps_per_s = (step - run_start_step) / max(time.time() - run_start, 1e-9)
                    eta = (tc.max_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
                    logging.info("step %d/%d  train %.4f bits/sample  %.0f samples/s  lr %.2e  ETA %s",
                                 step, tc.max_steps, last_bits, rate, float(metrics["learning_rate"]),
                                 _format_eta(eta))
                    writers.scalars("train", {
                        "bits_per_sample": last_bits, "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(metrics["learning_rate"]), "samples_per_second": rate}, step)
                    window_start, window_steps = time.time(), 0
                if not math.isfinite(float(metrics["bits_per_sample"])):
                    raise FloatingPointError(f"step {step}: the training loss is not finite; lower "
                                             f"--learning_rate or check the data")
                if tc.valid_every and step % tc.valid_every == 0 and len(corpora["valid"]):
                    validate(step)
                    if tc.early_stopping and stale_validations >= tc.early_stopping:
                        stopped = "early_stopping"
                        break
                if tc.audio_every and step % tc.audio_every == 0:
                    summaries.write_generated_audio(writers, trainer.model, config, step)
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    save("periodic")
                if stop.received:
                    stopped = stop.received
                    break
                if deadline and time.time() > deadline:
                    stopped = "time_limit"
                    break
        finally:
            if int(trainer.step) > 0 and manager.latest_checkpoint != os.path.join(
                    checkpoints.checkpoint_dir(logdir), f"ckpt-{int(trainer.step)}"):
                save(f"exit: {stopped}")
            writers.flush()
        if len(corpora["valid"]) and tc.valid_every and last_validated != step and step > run_start_step:
            validate(step)  # so that best/ always reflects the final weights too
        logging.info("training stopped at step %d (%s); TensorBoard: tensorboard --logdir %s",
                     step, stopped, logdir)
        return RunResult(step=step, train_bits_per_sample=last_bits,
                         best_valid_bits_per_sample=best_bits, stopped_because=stopped,
                         valid_history=history)
