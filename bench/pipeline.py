"""Input pipeline throughput: decoding and window streaming.

    .venv/bin/python bench/pipeline.py [--seconds_per_file=30] [--files=16]

Writes a synthetic corpus (music-like: harmonic tones with vibrato and noise) as 16-bit WAV and
FLAC at 16 kHz (no resampling) and at 44.1 kHz stereo (resampled to 16 kHz mono), then prints

  * decode: audio-seconds per second of wall time for the one-pass decode + resample +
    normalize + quantize (`pipelines.dataset.load_corpus`), and
  * stream: windows/s and audio-seconds/s of training batches (`train_dataset`) for the
    default 3-tier config (frame_sizes 8,2, seq_len 512) at batch 16,

and compares the streaming rate with what training consumes (bench/train_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import soundfile  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipelines import dataset  # noqa: E402
from samplernn_tf.config import Config, DataConfig, ModelConfig, TrainConfig  # noqa: E402


def synth(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(110, 440)
    x = sum(np.sin(2 * np.pi * f0 * k * t + 0.3 * np.sin(2 * np.pi * 5 * t)) / k for k in range(1, 6))
    x = 0.3 * x / np.abs(x).max() + 0.01 * rng.standard_normal(len(t))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write_corpus(root: str, fmt: str, rate: int, channels: int, files: int, seconds: float) -> list[str]:
    paths = []
    for i in range(files):
        path = os.path.join(root, f"{fmt}_{rate}_{i:03d}.{fmt}")
        soundfile.write(path, synth(seconds, rate, channels, i), rate, subtype="PCM_16")
        paths.append(path)
    return paths


def bench_decode(paths, config, total_seconds, repeats=2):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        corpus = dataset.load_corpus(paths, config)
        best = min(best, time.perf_counter() - start)
    return corpus, total_seconds / best


def bench_stream(corpus, config, steps: int):
    ds = dataset.train_dataset(corpus, config, config.train.batch_size, seed=0)
    it = iter(ds)
    for _ in range(5):
        next(it)  # tracing and warm-up
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
    batch["targets"].numpy()
    elapsed = time.perf_counter() - start
    windows = steps * config.train.batch_size
    return windows / elapsed, windows * config.data.seq_len / config.data.sample_rate / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--seconds_per_file", type=float, default=30.0)
    parser.add_argument("--stream_steps", type=int, default=300)
    args = parser.parse_args()
    config = Config(model=ModelConfig(frame_sizes=(8, 2)), data=DataConfig(seq_len=512),
                    train=TrainConfig(batch_size=16))
    total = args.files * args.seconds_per_file
    print(f"corpus: {args.files} files x {args.seconds_per_file:g} s = {total:g} s per format; "
          f"TF {tf.__version__}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as root:
        rows = []
        for fmt, rate, channels in (("wav", 16000, 1), ("flac", 16000, 1),
                                    ("wav", 44100, 2), ("flac", 44100, 2)):
            paths = write_corpus(root, fmt, rate, channels, args.files, args.seconds_per_file)
            corpus, decode_rate = bench_decode(paths, config, total)
            label = f"{fmt.upper():4s} {rate / 1000:g} kHz {'stereo' if channels == 2 else 'mono'}"
            label += " -> 16 kHz mono (resampled)" if rate != 16000 else " (no resampling)"
            rows.append((label, decode_rate))
            print(f"decode  {label:48s} {decode_rate:10.0f} audio-s/s  ({decode_rate / 3600:.2f} h/s)")
        win_rate, sec_rate = bench_stream(corpus, config, args.stream_steps)
        print(f"stream  batches of 16 x 512-sample windows, frame_sizes 8,2: {win_rate:10.0f} windows/s = "
              f"{sec_rate:.0f} audio-s/s = {sec_rate * 16000:.3g} samples/s")
        print("training consumes ~1e4–1e5 samples/s on this CPU (bench/train_throughput.py): the "
              f"stream keeps up {sec_rate * 16000 / 1e5:.0f}x over even the fastest config")


if __name__ == "__main__":
    main()
