"""Generates audio with a trained run and writes 16-bit WAV files.

    python -m samplernn_tf.generate --logdir=RUN --output_dir=OUT --num_seqs=4 --seconds=10 \\
        --temperature=0.9 --seed=1 [--prime_audio=clip.flac] [--checkpoint=best]

Files are named `step<STEP>_t<TEMPERATURE>_seed<SEED>_<INDEX>.wav` (plus `_primed` with a
prime), at the model's sample rate. All sequences are generated in one batch, in chunks of
`--chunk_seconds` that carry the state, so progress (seconds done, samples/s, ETA) is logged
after every chunk; the audio does not depend on the chunk size. The last line printed is one
JSON object: files, step, checkpoint, seconds, samples_per_second.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from samplernn_tf import errors

FLAGS = flags.FLAGS


def load_prime(path: str, config) -> np.ndarray:
    """Decodes an audio file to float32 [T] mono at the model's rate (not yet normalized: the
    generator normalizes it as the pipeline does a file).

    Raises:
      AudioDecodeError: unreadable, corrupt or unsupported file.
      errors.UserError: shorter than one top frame after resampling.
    """
    from pipelines import audio as audio_lib
    if not tf.io.gfile.exists(path):
        raise errors.UserError(f"--prime_audio={path}: no such file")
    [(_, x)] = audio_lib.decode_files([path], config.data.sample_rate, normalize_mode="none",
                                      remove_dc=False, strict=True)
    top = config.model.top_frame_size
    if len(x) < top:
        raise errors.UserError(
            f"--prime_audio={path}: {len(x)} samples at {config.data.sample_rate} Hz is shorter "
            f"than one top frame ({top} samples); use a longer clip")
    return x.astype(np.float32)


def wav_name(step: int, temperature: float, seed: int, index: int, primed: bool) -> str:
    return f"step{step}_t{temperature:.2f}_seed{seed}{'_primed' if primed else ''}_{index:03d}.wav"


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> None:
    """float32 [T] in [-1, 1] -> 16-bit PCM WAV (local or gs://)."""
    data = tf.audio.encode_wav(tf.constant(audio, tf.float32)[:, None], sample_rate)
    tf.io.write_file(path, data)


def generate_files(logdir: str, output_dir: str, *, num_seqs: int = 1,
                   num_samples: int | None = None, seconds: float | None = None,
                   temperature: float = 1.0, seed: int = 0, prime_audio: str | None = None,
                   checkpoint: str = "best", jit: bool | None = None,
                   chunk_seconds: float = 1.0) -> list[str]:
    """Restores a run, generates `num_seqs` sequences and writes them as WAV files.

    The length is `num_samples`, or `seconds` at the model's rate. Returns the WAV paths.
    See `run_generation` for the arguments and errors.
    """
    return run_generation(logdir, output_dir, num_seqs=num_seqs, num_samples=num_samples,
                          seconds=seconds, temperature=temperature, seed=seed,
                          prime_audio=prime_audio, checkpoint=checkpoint, jit=jit,
                          chunk_seconds=chunk_seconds)["files"]


def run_generation(logdir: str, output_dir: str, *, num_seqs: int = 1,
                   num_samples: int | None = None, seconds: float | None = None,
                   temperature: float = 1.0, seed: int = 0, prime_audio: str | None = None,
                   checkpoint: str = "best", jit: bool | None = None,
                   chunk_seconds: float = 1.0) -> dict:
    """Restores a run, generates `num_seqs` sequences and writes them as WAV files.

    Args:
      logdir: the training run directory.
      output_dir: where the WAVs go (created).
      num_seqs: sequences, generated as one batch.
      num_samples, seconds: the length; give one (`num_samples` wins if both).
      temperature, seed: sampling.
      prime_audio: optional audio file to continue (any format and rate).
      checkpoint: 'best', 'latest' or a path prefix.
      jit: XLA for the generation loop (None = by model size).
      chunk_seconds: progress is logged after each chunk of this length.

    Returns:
      {'files': [...], 'step', 'checkpoint', 'seconds', 'samples_per_second'}.

    Raises:
      FileNotFoundError: no config.json or no checkpoint.
      errors.UserError: bad arguments or a bad prime file; AudioDecodeError: undecodable prime.
    """
    from samplernn_tf import checkpoints, generation
    from samplernn_tf.config import Config
    from samplernn_tf.model import SampleRNN

    if num_seqs < 1:
        raise errors.UserError(f"--num_seqs must be >= 1, got {num_seqs}")
    if not temperature > 0:
        raise errors.UserError(f"--temperature must be > 0, got {temperature}")
    if chunk_seconds <= 0:
        raise errors.UserError(f"--chunk_seconds must be > 0, got {chunk_seconds}")
    config = Config.load(logdir)
    if num_samples is None or num_samples <= 0:
        if seconds is None or not seconds > 0:
            raise errors.UserError(f"the length must be positive: --seconds={seconds}, "
                                   f"--num_samples={num_samples}")
        num_samples = int(round(seconds * config.data.sample_rate))
    path = checkpoints.resolve(logdir, checkpoint)
    prime = load_prime(prime_audio, config) if prime_audio else None
    model = SampleRNN(config.model)
    try:
        step = checkpoints.restore_weights(model, path)
    except ValueError as e:
        raise errors.UserError(str(e)) from e
    rate = config.data.sample_rate
    gen = generation.Generator(model, config, jit=jit)
    logging.info("generating %d x %.2f s at %d Hz from %s (step %d), temperature %g, seed %d%s",
                 num_seqs, num_samples / rate, rate, path, step, temperature, seed,
                 f", primed with {prime_audio} ({len(prime) / rate:.2f} s)" if prime is not None else "")
    chunks, done = [], 0
    start = time.time()
    for audio, _ in gen.stream(num_samples, num_seqs, temperature, seed, prime=prime,
                               chunk_samples=max(1, int(round(chunk_seconds * rate)))):
        chunks.append(audio)
        done += audio.shape[1]
        elapsed = time.time() - start
        speed = done * num_seqs / max(elapsed, 1e-9)
        eta = (num_samples - done) * num_seqs / max(speed, 1e-9)
        logging.info("%6.2f / %.2f s (%3.0f%%)  %8.0f samples/s  (%.2fx real time)  ETA %.0fs",
                     done / rate, num_samples / rate, 100.0 * done / num_samples, speed,
                     speed / rate, eta)
    elapsed = time.time() - start
    audio = np.concatenate(chunks, axis=1)
    tf.io.gfile.makedirs(output_dir)
    files = []
    for i in range(num_seqs):
        out = os.path.join(output_dir, wav_name(step, temperature, seed, i, prime is not None))
        write_wav(out, audio[i], rate)
        files.append(out)
    logging.info("wrote %d files to %s", len(files), output_dir)
    return {"files": files, "step": step, "checkpoint": path, "seconds": num_samples / rate,
            "samples_per_second": num_samples * num_seqs / max(elapsed, 1e-9)}


def main(argv):
    del argv
    from flags import generate as generate_flags
    with errors.exit_on_user_error():
        from samplernn_tf import cli
        cli.setup()
        result = run_generation(
            FLAGS.logdir, FLAGS.output_dir, num_seqs=FLAGS.num_seqs,
            num_samples=FLAGS.num_samples if FLAGS.num_samples > 0 else None,
            seconds=FLAGS.seconds, temperature=FLAGS.temperature, seed=FLAGS.seed,
            prime_audio=FLAGS.prime_audio, checkpoint=FLAGS.checkpoint,
            jit=generate_flags.jit_from_flag(FLAGS.jit), chunk_seconds=FLAGS.chunk_seconds)
        print(json.dumps(result))


if __name__ == "__main__":
    from flags import generate as _generate_flags
    _generate_flags.define_flags()
    app.run(main)
