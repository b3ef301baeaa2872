"""TensorBoard output of a run: scalars, hyperparameters and generated audio."""

from __future__ import annotations

import os
import time

import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp

from samplernn_tf.config import Config


class Writers:
    """One event-file writer per stream (`<logdir>/train`, `<logdir>/valid`, `<logdir>/samples`)."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self._writers = {}

    def _get(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.logdir, name))
        return self._writers[name]

    def scalar(self, stream: str, name: str, value: float, step: int) -> None:
        self.scalars(stream, {name: value}, step)

    def scalars(self, stream: str, values: dict, step: int) -> None:
        with self._get(stream).as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def audio(self, stream: str, name: str, audio, sample_rate: int, step: int) -> None:
        """audio: float32 [batch, time] in [-1, 1]."""
        with self._get(stream).as_default(step=step):
            tf.summary.audio(name, tf.convert_to_tensor(audio)[:, :, None], sample_rate,
                             max_outputs=int(audio.shape[0]), encoding="wav")

    def hparams(self, config: Config) -> None:
        """Logs the config through the HParams plugin, with the metrics it should show."""
        values = {}
        for section in ("model", "data", "train"):
            for k, v in config.to_dict()[section].items():
                values[f"{section}.{k}"] = str(list(v)) if isinstance(v, (list, tuple)) else v
        with self._get("train").as_default():
            hp.hparams_config(hparams=[hp.HParam(k) for k in values],
                              metrics=[hp.Metric("bits_per_sample", group="valid",
                                                 display_name="valid bits/sample"),
                                       hp.Metric("bits_per_sample", group="train",
                                                 display_name="train bits/sample")])
            hp.hparams(values, trial_id=os.path.basename(os.path.normpath(self.logdir)))

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()


class AudioSampler:
    """Writes generated audio to TensorBoard from the current weights.

    Keeps one Generator for the whole run, so its compiled sampling graph is traced once, not
    at every summary; it reads the live weights each time.
    """

    def __init__(self, model, config: Config, num_seqs: int = 2, temperature: float = 1.0):
        self.model, self.config = model, config
        self.num_seqs, self.temperature = num_seqs, temperature
        self._generator = None

    def write(self, writers: Writers, step: int) -> None:
        """Generates `config.train.audio_seconds` of audio and writes it under `samples/`."""
        from samplernn_tf import generation  # the generator builds its own graph: import on use

        start = time.time()
        if self._generator is None:
            self._generator = generation.Generator(self.model, self.config)
        c = self.config
        audio, _ = self._generator.generate(
            num_samples=int(c.train.audio_seconds * c.data.sample_rate), batch_size=self.num_seqs,
            temperature=self.temperature, seed=step)
        writers.audio("samples", "generated", audio, c.data.sample_rate, step)
        logging.info("step %d: wrote %d x %.1f s of generated audio to TensorBoard in %.1fs",
                     step, self.num_seqs, c.train.audio_seconds, time.time() - start)
