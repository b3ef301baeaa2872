"""The training job: data, trainer, checkpoints, validation, TensorBoard, clean exits.

`run(...)` is what `python -m samplernn_tf.train` calls; it takes configs and paths, never
flags. Running it again on the same logdir resumes from the latest checkpoint: model,
optimizer, step, every row's RNN state and the data position, so the loss curve continues
as if the run had never stopped. That holds on one worker (`--strategy=default` or
`mirrored`, and from one to the other); a multi-worker checkpoint holds the model, optimizer
and step, and the rows start afresh on a new data order (`distribute.Topology.exact_resume`).

Faults (docs/distributed.md): SIGINT/SIGTERM -> checkpoint and a clean stop; a killed run
restarts from its last checkpoint; damaged checkpoints and `checkpoint` state files are
skipped or rebuilt; steps with a non-finite loss or gradients are skipped and counted, and
`max_nonfinite_steps` in a row stop the run; a second trainer on a live logdir is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import time

import keras
import tensorflow as tf
from absl import logging

from pipelines import dataset as dataset_lib
from pipelines import records
from samplernn_tf import checkpoints
from samplernn_tf import distribute
from samplernn_tf import evaluation
from samplernn_tf import rundir
from samplernn_tf import summaries
from samplernn_tf.config import Config
from samplernn_tf.errors import UserError

# These used to live here.
LOCK_FILE = rundir.LOCK_FILE
LogdirLock = rundir.LogdirLock
config_differences = rundir.config_differences
prepare_logdir = rundir.prepare_logdir


class NonFiniteLossError(UserError, FloatingPointError):
    """`max_nonfinite_steps` training steps in a row had a non-finite loss or gradients."""


@dataclasses.dataclass
class RunResult:
    step: int
    train_bits_per_sample: float
    best_valid_bits_per_sample: float | None
    stopped_because: str
    valid_history: list  # [(step, valid bits per sample)] of this invocation
    nonfinite_steps: int = 0  # skipped steps of this invocation


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
    if len(corpora["valid"]) == 0 and config.train.valid_every:
        logging.warning("no usable validation audio (%d valid files): validation and the best "
                        "checkpoint are off. Add a valid/ folder, or more files for the split by "
                        "file (--valid_fraction); --chunk_seconds cuts files after the split",
                        len(files["valid"]))
    return corpora


def _has_rows(path: str) -> bool:
    """Whether a checkpoint holds the data position and RNN state (a single-worker one does)."""
    names = [name for name, _ in tf.train.list_variables(path)]
    return any(n.startswith("data/") for n in names) and any(n.startswith("rnn_state/") for n in names)


def run(config: Config, data_dir: str, logdir: str, *, time_limit_minutes: float = 0.0,
        valid_batch_size: int = 32, overwrite: bool = False,
        strategy: str | tf.distribute.Strategy = "default") -> RunResult:
    """Trains until `config.train.max_steps`, the time limit, early stopping, or a signal.

    Args:
      strategy: a `distribute.STRATEGIES` name or a tf.distribute.Strategy. multi_worker must
        be built before TensorFlow runs any op in the process: pass its name, or build it first.

    Raises:
      NonFiniteLossError: `max_nonfinite_steps` steps in a row were skipped (after saving).
      ConfigError, UserError, NoAudioError: bad setup, found before training.
    """
    from samplernn_tf import trainer as trainer_lib  # heavy: keep `import training` cheap

    if isinstance(strategy, str):
        strategy = distribute.make_strategy(strategy)
    topo = distribute.topology(strategy)
    chief = topo.is_chief
    tc = config.train
    distribute.check_batch_size(tc.batch_size, topo)
    ckpt_dir, best_dir = checkpoints.checkpoint_dir(logdir), checkpoints.best_dir(logdir)
    if chief:
        tf.io.gfile.makedirs(logdir)
    previous = Config.load(logdir) if tf.io.gfile.exists(os.path.join(logdir, "config.json")) else None
    # The lock comes first: a refused trainer must not touch the run it was refused from.
    with rundir.LogdirLock(logdir) if chief else contextlib.nullcontext(), _StopSignals() as stop:
        if chief:
            rundir.prepare_logdir(logdir, config, overwrite)
            rundir.repair_checkpoint_state(ckpt_dir)
        else:
            rundir.check_logdir(logdir, config, overwrite)
        corpora = load_splits(data_dir, config)
        keras.utils.set_random_seed(tc.seed)
        trainer = trainer_lib.Trainer(config, strategy)
        rows = tc.batch_size // topo.num_workers

        def batches(seed):
            """This worker's rows of every global batch, as a checkpointable iterator."""
            return iter(dataset_lib.train_dataset(corpora["train"], config, rows, seed,
                                                  num_shards=topo.num_workers,
                                                  shard_index=topo.worker_index))

        iterator = batches(tc.seed)
        if strategy.num_replicas_in_sync > 1:
            trainer.use_input_spec(distribute.distributed_spec(strategy, topo, iterator.element_spec))
        rnn_state = distribute.GlobalRnnState(strategy, trainer.model.state_variables)
        core = dict(model=trainer.model, optimizer=trainer.optimizer, step=trainer.step)
        full = tf.train.Checkpoint(**core, data=iterator, rnn_state=rnn_state.variables)
        partial = tf.train.Checkpoint(**core)
        same_rows = previous is None or (previous.train.batch_size, previous.train.seed) == (
            tc.batch_size, tc.seed)
        exact = topo.exact_resume and same_rows
        restored_rows = False

        def restore(path):
            nonlocal restored_rows
            restored_rows = exact and _has_rows(path)
            if restored_rows:
                full.restore(path).assert_consumed()
                rnn_state.scatter()
            else:  # weights, optimizer and step only
                partial.read(path).expect_partial()

        distribute.barrier(strategy, topo)  # the chief has prepared the logdir
        restored = checkpoints.restore_latest_intact(tf.train.CheckpointManager(partial, ckpt_dir, 1),
                                                     restore)
        start_step = int(trainer.step)
        distribute.check_same_step(strategy, topo, start_step)
        if restored:
            if not restored_rows:
                why = ("--batch_size or --seed changed" if not same_rows else
                       f"{topo.num_workers} workers do not checkpoint them" if not topo.exact_resume
                       else "the checkpoint has none (written by a multi-worker run)")
                logging.info("RNN state and data position start afresh (%s), on a new data order", why)
                iterator = batches(tc.seed + start_step)  # do not replay the run's first files
            logging.info("resumed from %s at step %d", restored, start_step)
        else:
            logging.info("starting a new run in %s", logdir)
        if not topo.exact_resume:
            logging.info("%d workers: checkpoints hold the model, optimizer and step, not the RNN "
                         "state or data position", topo.num_workers)
        ckpt = (tf.train.Checkpoint(**core, data=iterator, rnn_state=rnn_state.variables)
                if topo.exact_resume else partial)
        manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=tc.keep_checkpoints)
        best_ckpt = tf.train.Checkpoint(model=trainer.model, step=trainer.step)
        best_manager = tf.train.CheckpointManager(best_ckpt, best_dir, max_to_keep=1)

        def save_as_worker(checkpoint, directory, step):
            # Every worker saves (the MultiWorkerMirroredStrategy contract); non-chiefs into a
            # temporary directory that they delete.
            tmp = distribute.worker_temp_dir(directory, topo)
            tf.train.CheckpointManager(checkpoint, tmp, max_to_keep=1).save(checkpoint_number=step)
            rundir.remove_dir(tmp)

        writers = summaries.Writers(logdir) if chief else rundir.NullWriters()
        sampler = summaries.AudioSampler(trainer.model, config)
        writers.hparams(config)
        evaluator = evaluation.Evaluator(trainer.model)
        best = checkpoints.read_best(logdir)
        best_bits = best["valid_bits_per_sample"] if best else None
        stale_validations = 0
        last_validated = -1
        last_saved = start_step if restored else -1
        history = []
        samples_per_step = tc.batch_size * config.data.seq_len
        deadline = time.time() + time_limit_minutes * 60 if time_limit_minutes > 0 else None

        def save(reason):
            nonlocal last_saved
            step = int(trainer.step)
            rnn_state.gather()
            if chief:
                path = manager.save(checkpoint_number=step)
                logging.info("saved checkpoint %s at step %d (%s)", path, step, reason)
            else:
                save_as_worker(ckpt, ckpt_dir, step)
            last_saved = step

        def validate(step):
            nonlocal best_bits, stale_validations, last_validated
            last_validated = step
            result = evaluator.evaluate(corpora["valid"], config, valid_batch_size)
            bits = result["nll_bits_per_sample"]
            history.append((step, bits))
            writers.scalar("valid", "bits_per_sample", bits, step)
            if best_bits is None or bits < best_bits:
                best_bits, stale_validations = bits, 0
                if chief:
                    best_manager.save(checkpoint_number=step)
                    checkpoints.write_best(logdir, step, bits)
                else:
                    save_as_worker(best_ckpt, best_dir, step)
            else:
                stale_validations += 1
            logging.info("step %d: valid %.4f bits/sample (best %.4f)", step, bits, best_bits)

        stopped = "max_steps"
        last_bits = float("nan")
        nonfinite_total = nonfinite_run = 0
        window_start, window_steps = time.time(), 0
        run_start = time.time()
        step = start_step
        try:
            while step < tc.max_steps:
                metrics = trainer.train_step(distribute.split_batch(strategy, topo, next(iterator)))
                step = int(trainer.step)
                window_steps += 1
                if not bool(metrics["finite"]):
                    nonfinite_total += 1
                    nonfinite_run += 1
                    logging.warning(
                        "step %d: non-finite loss or gradients (%.4g bits/sample, grad norm %.4g): "
                        "update skipped, weights and RNN state unchanged (%d in a row, %d this run; "
                        "stop at %d in a row)", step, float(metrics["bits_per_sample"]),
                        float(metrics["grad_norm"]), nonfinite_run, nonfinite_total,
                        tc.max_nonfinite_steps)
                    writers.scalar("train", "nonfinite_steps", nonfinite_total, step)
                else:
                    nonfinite_run = 0
                if tc.log_every and step % tc.log_every == 0 or step == tc.max_steps:
                    last_bits = float(metrics["bits_per_sample"])
                    elapsed = time.time() - window_start
                    rate = window_steps * samples_per_step / max(elapsed, 1e-9)
                    steps_per_s = (step - start_step) / max(time.time() - run_start, 1e-9)
                    eta = (tc.max_steps - step) / steps_per_s if steps_per_s > 0 else float("inf")
                    logging.info("step %d/%d  train %.4f bits/sample  %.0f samples/s  lr %.2e  ETA %s",
                                 step, tc.max_steps, last_bits, rate, float(metrics["learning_rate"]),
                                 _format_eta(eta))
                    writers.scalars("train", {
                        "bits_per_sample": last_bits, "grad_norm": float(metrics["grad_norm"]),
                        "learning_rate": float(metrics["learning_rate"]), "samples_per_second": rate,
                        "nonfinite_steps": nonfinite_total}, step)
                    window_start, window_steps = time.time(), 0
                if nonfinite_run >= tc.max_nonfinite_steps:
                    stopped = "nonfinite"
                    break
                if tc.valid_every and step % tc.valid_every == 0 and len(corpora["valid"]):
                    validate(step)
                if chief and tc.audio_every and step % tc.audio_every == 0:
                    sampler.write(writers, step)
                if tc.checkpoint_every and step % tc.checkpoint_every == 0:
                    save("periodic")
                # Local reasons to stop, agreed by all workers (one would hang alone otherwise).
                early, signalled, late = distribute.any_worker(strategy, topo, [
                    bool(tc.early_stopping) and stale_validations >= tc.early_stopping,
                    stop.received is not None, deadline is not None and time.time() > deadline])
                if early or signalled or late:
                    stopped = ("early_stopping" if early else
                               (stop.received or "signal to another worker") if signalled else
                               "time_limit")
                    break
        except BaseException as e:
            stopped = f"error: {type(e).__name__}"
            if topo.num_workers > 1 and isinstance(e, (tf.errors.UnavailableError,
                                                       tf.errors.CancelledError,
                                                       tf.errors.AbortedError)):
                logging.error("lost contact with another worker (%s). Restart every worker with "
                              "the same command: training resumes from the chief's last "
                              "checkpoint", str(e).splitlines()[0][:200])
            raise
        finally:
            if int(trainer.step) > 0 and last_saved != int(trainer.step):
                save(f"exit: {stopped}")
            writers.flush()
        if stopped == "nonfinite":
            raise NonFiniteLossError(
                f"stopped at step {step}: the last {nonfinite_run} training steps had a non-finite "
                f"loss or gradients and were skipped, so the weights are those of step "
                f"{step - nonfinite_run} (saved with the exit checkpoint). Lower --learning_rate, "
                f"keep --clip_type=norm, check the data, or raise --max_nonfinite_steps")
        if len(corpora["valid"]) and tc.valid_every and last_validated != step and step > start_step:
            validate(step)  # so that best/ always reflects the final weights too
        logging.info("training stopped at step %d (%s); TensorBoard: tensorboard --logdir %s",
                     step, stopped, logdir)
        return RunResult(step=step, train_bits_per_sample=last_bits,
                         best_valid_bits_per_sample=best_bits, stopped_because=stopped,
                         valid_history=history, nonfinite_steps=nonfinite_total)
