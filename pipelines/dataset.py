"""Dataset assembly: splits, the decoded corpus, and batched TBPTT window streams.

Each batch row is one continuous stream of windows: the files of the split, one after another,
in a shuffled order. A row's `reset` flag is True on the first window of each file, which is
where the stateful model sends that row (and only that row) back to its initial state.

Padding policy (documented in BUILD.md):
  * every file is front-padded with B samples of silence (B = top frame size), so its first
    sample is already a target, and back-padded with silence to a whole number of windows;
  * padded targets get weight 0 and are masked out of the loss, so the ragged last window
    still trains on its real samples and evaluation counts every real sample exactly once;
  * a file shorter than one window is therefore padded, not skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from pipelines import audio
from pipelines import records
from pipelines import windows
from samplernn_tf import quantization
from samplernn_tf.config import Config

SPLITS = ("train", "valid", "test")


class NoAudioError(RuntimeError):
    """A data directory or split has no usable audio."""


# ----------------------------------------------------------------------------------- splits --


def split_by_hash(files: Sequence[str], valid_fraction: float, test_fraction: float,
                  seed: int, root: str = "") -> dict[str, list[str]]:
    """Deterministic, seeded split by file.

    Files are ordered by a hash of (seed, path relative to `root`), and the first
    round(n * fraction) go to test, the next to valid, the rest to train (at least one file each
    for a nonzero fraction when there are at least 3 files). The order does not depend on the
    listing order or on the machine, and no file is in two splits.

    Returns:
      {'train': [...], 'valid': [...], 'test': [...]}, each sorted.
    """
    def key(path):
        rel = os.path.relpath(path, root) if root else path
        return hashlib.sha256(f"{seed}:{rel}".encode()).hexdigest()

    ordered = sorted(files, key=key)
    n = len(ordered)

    def count(fraction):
        if fraction <= 0:
            return 0
        c = int(round(n * fraction))
        return max(c, 1) if n >= 3 else c

    n_test, n_valid = count(test_fraction), count(valid_fraction)
    n_test = min(n_test, max(n - 1, 0))
    n_valid = min(n_valid, max(n - 1 - n_test, 0))
    return {"test": sorted(ordered[:n_test]),
            "valid": sorted(ordered[n_test:n_test + n_valid]),
            "train": sorted(ordered[n_test + n_valid:])}


def find_splits(data_dir: str, valid_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[str]]:
    """Lists the audio files of each split.

    If `data_dir` has `train/`, `valid/` and `test/` subfolders (any of them may be empty), they
    are the splits. Otherwise every audio file found recursively (or by the glob) is split by
    `split_by_hash`. A directory written by `pipelines.prepare` gives the same split of the
    original input, as file ids (see `records.find_splits`).

    Raises:
      FileNotFoundError: `data_dir` does not exist.
      NoAudioError: no supported audio file at all.
    """
    if records.is_prepared(data_dir):
        return records.find_splits(data_dir, valid_fraction, test_fraction, seed)
    sub = {s: os.path.join(data_dir, s) for s in SPLITS}
    if tf.io.gfile.isdir(data_dir) and all(tf.io.gfile.isdir(p) for p in sub.values()):
        splits = {}
        for s, path in sub.items():
            try:
                splits[s] = audio.list_audio_files(path)
            except FileNotFoundError:
                splits[s] = []
    else:
        files = audio.list_audio_files(data_dir)
        root = data_dir if tf.io.gfile.isdir(data_dir) else ""
        splits = split_by_hash(files, valid_fraction, test_fraction, seed, root)
    if not any(splits.values()):
        raise NoAudioError(f"{data_dir}: no audio files ({', '.join(audio.SUPPORTED_EXTENSIONS)}) found")
    return splits


# ----------------------------------------------------------------------------------- corpus --


@dataclasses.dataclass
class Corpus:
    """Decoded, quantized audio of one split, held in memory (decoded once).

    Attributes:
      names: one name per item; an item is a file, or a chunk `path@start_seconds`.
      codes: int16 (or int32 when Q > 32768) code arrays, one [T_i] per item.
      sample_rate: the rate all items were resampled to.
    """

    names: list[str]
    codes: list[np.ndarray]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(c) for c in self.codes], dtype=np.int64)

    @property
    def num_samples(self) -> int:
        return int(self.lengths.sum())

    @property
    def seconds(self) -> float:
        return self.num_samples / self.sample_rate

    def num_windows(self, seq_len: int) -> int:
        """Total TBPTT windows over all items (each item padded to whole windows)."""
        return int(sum(windows.num_windows(int(n), seq_len) for n in self.lengths))

    def ragged(self) -> tf.RaggedTensor:
        """All codes as one int32 RaggedTensor [num_items, (T_i)]."""
        flat = np.concatenate(self.codes) if self.codes else np.zeros([0], np.int32)
        return tf.RaggedTensor.from_row_lengths(tf.constant(flat.astype(np.int32)), self.lengths)


def code_dtype(q_levels: int):
    return np.int16 if q_levels <= 32768 else np.int32


def pcm16_round_trip(x):
    """float32 [T] in [-1, 1] -> the same values rounded to the 16-bit PCM grid."""
    return tf.round(tf.clip_by_value(x, -1.0, 1.0) * 32767.0) / 32767.0


def quantize_audio(x, config: Config):
    """The codes the corpus stores for normalized audio: the one definition that training,
    evaluation, priming and the exported `score` share.

    Rounds through 16-bit PCM first: prepared TFRecord shards store int16, and every path must
    give identical codes.

    Args:
      x: float32 [..., T], already normalized (pipelines.audio.normalize).
    Returns:
      int32 codes, same shape.
    """
    return quantization.encode(pcm16_round_trip(x), config.data.q_type, config.model.q_levels)


def load_corpus(files: Sequence[str], config: Config, prepared_dir: str | None = None) -> Corpus:
    """Decodes, resamples, normalizes and quantizes `files` once, then cuts chunks.

    Unreadable files are skipped with a warning naming each (fatal with `data.strict`).
    With `prepared_dir` (a `pipelines.prepare` output), `files` are its file ids, read from its
    int16 shards: the same codes as from the raw files (ConfigError if the settings differ).
    """
    data, q_levels = config.data, config.model.q_levels
    dtype = tf.int16 if code_dtype(q_levels) == np.int16 else tf.int32

    def quantize(x):
        return tf.cast(quantize_audio(x, config), dtype)

    if prepared_dir:
        decoded = records.decode_prepared(
            prepared_dir, list(files), postprocess=quantize, sample_rate=data.sample_rate,
            normalize=data.normalize, remove_dc=data.remove_dc, strict=data.strict)
    else:
        decoded = audio.decode_files(list(files), data.sample_rate, data.normalize, data.remove_dc,
                                     strict=data.strict, postprocess=quantize)
    names, codes = [], []
    chunk = int(round(data.chunk_seconds * data.sample_rate))
    for path, c in decoded:
        if chunk <= 0 or len(c) <= chunk:
            names.append(path)
            codes.append(c)
            continue
        for start in range(0, len(c), chunk):
            names.append(f"{path}@{start / data.sample_rate:g}s")
            codes.append(c[start:start + chunk])
    return Corpus(names=names, codes=codes, sample_rate=data.sample_rate)


# --------------------------------------------------------------------------------- streams --


def _item_windows(codes, seq_len: int, top: int, pad_code: int) -> tf.data.Dataset:
    """Dataset of one item's raw windows.

    Args:
      codes: int32 [T].

    Returns:
      Elements {'window': int32 [L + B], 'weights': float32 [L], 'reset': bool []}, the first
      with reset=True.
    """
    padded, weights = windows.pad_for_windows(codes, seq_len, top, pad_code)
    raw = tf.signal.frame(padded, seq_len + top, seq_len)  # [N, L + B]
    n = tf.shape(raw)[0]
    return tf.data.Dataset.from_tensor_slices({
        "window": raw,
        "weights": tf.reshape(weights, [n, seq_len]),
        "reset": tf.equal(tf.range(n), 0),
    })


def _expand(batch, seq_len: int, frame_sizes: Sequence[int]):
    """Raw batched windows {'window': [R, L + B], ...} -> the model's batch dict."""
    w = windows.tbptt_windows(batch["window"], seq_len, frame_sizes)  # N = 1 window per row
    return {
        "tier_inputs": tuple(t[:, 0] for t in w["tier_inputs"]),  # [R, L/f, f] each
        "sample_inputs": w["sample_inputs"][:, 0],                  # [R, L, F]
        "targets": w["targets"][:, 0],                              # [R, L]
        "weights": batch["weights"],                                # [R, L]
        "reset": batch["reset"],                                    # [R]
    }


def _zip_rows(rows: list[tf.data.Dataset], seq_len: int, frame_sizes) -> tf.data.Dataset:
    """Round-robin over the row streams, batched so that batch row r comes from stream r."""
    picks = tf.data.Dataset.range(len(rows)).repeat()
    interleaved = tf.data.Dataset.choose_from_datasets(rows, picks, stop_on_empty_dataset=True)
    return interleaved.batch(len(rows), drop_remainder=True).map(
        lambda b: _expand(b, seq_len, frame_sizes), num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)


def train_dataset(corpus: Corpus, config: Config, batch_size: int, seed: int,
                  num_shards: int = 1, shard_index: int = 0) -> tf.data.Dataset:
    """Infinite stream of training batches.

    Row r of every batch plays items (files or chunks) `order[r], order[r + R], ...` of a
    seeded shuffled order that is redrawn every epoch, one after another, window by window, so
    each epoch every item is played exactly once by exactly one row.

    Args:
      corpus: the training split.
      config: for seq_len, frame_sizes, quantization.
      batch_size: R rows (per input pipeline).
      seed: shuffle seed.
      num_shards, shard_index: rows of a multi-worker global batch; this pipeline produces
        rows shard_index*R .. (shard_index+1)*R - 1 of R*num_shards global rows.

    Returns:
      Batches {'tier_inputs': tuple of int32 [R, L/f, f], 'sample_inputs': int32 [R, L, F],
      'targets': int32 [R, L], 'weights': float32 [R, L], 'reset': bool [R]}.
    """
    if len(corpus) == 0:
        raise NoAudioError("the training split has no usable audio")
    m, d = config.model, config.data
    top = m.top_frame_size
    pad = quantization.zero_code(d.q_type, m.q_levels)
    items = corpus.ragged()
    n = len(corpus)
    total_rows = batch_size * num_shards

    def row(r):
        order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ids = order.repeat().shard(total_rows, shard_index * batch_size + r)
        return ids.flat_map(lambda i: _item_windows(items[i], d.seq_len, top, pad))

    ds = _zip_rows([row(r) for r in range(batch_size)], d.seq_len, m.frame_sizes)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_rows(lengths: Sequence[int], seq_len: int, rows: int) -> list[list[int]]:
    """Assigns items to rows so that every item is played once and rows end close together.

    Longest item first, each to the row with the fewest windows so far (ties: lowest row).
    Returns row -> list of item indices, in play order.
    """
    load = [0] * rows
    assignment = [[] for _ in range(rows)]
    by_length = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    for i in by_length:
        r = min(range(rows), key=lambda k: (load[k], k))
        assignment[r].append(i)
        load[r] += windows.num_windows(int(lengths[i]), seq_len)
    return assignment


def eval_dataset(corpus: Corpus, config: Config, batch_size: int) -> tuple[tf.data.Dataset, int]:
    """Finite, deterministic batches that cover every sample of every item exactly once.

    Rows that run out of items before the longest row are filled with all-padding windows
    (weights 0, reset True), which contribute nothing to the loss.

    Returns:
      (dataset of batches as in `train_dataset`, number of batches).
    """
    if len(corpus) == 0:
        raise NoAudioError("the evaluation split has no usable audio")
    m, d = config.model, config.data
    top, L = m.top_frame_size, d.seq_len
    pad = quantization.zero_code(d.q_type, m.q_levels)
    rows = max(1, min(batch_size, len(corpus)))
    assignment = eval_rows(corpus.lengths, L, rows)
    counts = [sum(windows.num_windows(int(corpus.lengths[i]), L) for i in a) for a in assignment]
    steps = max(counts)
    filler = {"window": tf.fill([L + top], pad), "weights": tf.zeros([L]), "reset": tf.constant(True)}
    items = corpus.ragged()
    streams = []
    for r, ids in enumerate(assignment):
        played = tf.data.Dataset.from_tensor_slices(tf.constant(ids, tf.int64)).flat_map(
            lambda i: _item_windows(items[i], L, top, pad))
        streams.append(played.concatenate(tf.data.Dataset.from_tensors(filler).repeat(steps - counts[r])))
    return _zip_rows(streams, L, m.frame_sizes).prefetch(tf.data.AUTOTUNE), steps
