"""A corpus decoded once into sharded TFRecord files of int16 audio, and reading it back.

`pipelines.shard_writer.prepare(...)` (the library side of `python -m pipelines.prepare`)
lists the audio like `dataset.find_splits` would, decodes, resamples and normalizes every file
once with `audio.decode_files`, and writes, under the output directory:

  shard-00000.tfrecord ...    tf.train.Example per file: 'id' (path relative to the input),
                              'audio' (int16 little-endian bytes), 'num_samples', 'sample_rate'
  progress/shard-00000.json   resume state of each complete shard (same fields as the manifest's
                              shard entries, plus the settings)
  manifest.json               written last, atomically; its presence means "prepared"

A shard closes once it holds --shard_seconds of audio, so boundaries depend only on the file
list and the decoded lengths, and a re-run reproduces them: a shard whose file list and settings
match its progress record and whose file has the recorded size is kept, anything else is
decoded and written again (to a temporary name, renamed when complete).

Training reads a prepared directory with `find_splits` (the same split as on the raw input)
and `decode_prepared`, whose int16 -> float32 / 32767 values equal the raw path's
`dataset.pcm16_round_trip`, so both give identical codes.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines import audio
from samplernn_tf.config import ConfigError

MANIFEST = "manifest.json"
PROGRESS_DIR = "progress"
FORMAT = "samplernn-tf prepared audio"
VERSION = 1


def dataset_module():
    from pipelines import dataset  # dataset imports this module
    return dataset


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tfrecord"


def to_pcm16(x):
    """float32 [T] in [-1, 1] -> int16 [T], the grid of `dataset.pcm16_round_trip`."""
    return tf.cast(tf.round(tf.clip_by_value(x, -1.0, 1.0) * 32767.0), tf.int16)


def from_pcm16(x):
    """int16 [T] -> float32 [T] = x / 32767 (what `dataset.pcm16_round_trip` returns)."""
    return tf.cast(x, tf.float32) / 32767.0


# ------------------------------------------------------------------------------- json i/o --

def read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_json(path: str, value) -> None:
    """Writes atomically: a temporary file renamed over `path`."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(value, indent=1) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


def is_prepared(data_dir: str) -> bool:
    """True if `data_dir` holds a complete `pipelines.prepare` output (its manifest.json).

    Only the head of the manifest is read, so a raw corpus that ships some other
    manifest.json is still raw audio.
    """
    path = os.path.join(data_dir, MANIFEST)
    try:
        if not tf.io.gfile.exists(path):
            return False
        with tf.io.gfile.GFile(path, "rb") as f:
            return FORMAT.encode() in f.read(200)
    except (tf.errors.OpError, OSError):
        return False


def read_manifest(data_dir: str) -> dict:
    """The manifest of a prepared directory.

    Raises:
      FileNotFoundError: no manifest.json (not prepared, or `prepare` has not finished).
      ConfigError: not a manifest of this format and version.
    """
    path = os.path.join(data_dir, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; run `python -m pipelines.prepare "
                                f"--output={data_dir} ...` (again) to finish it")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"{path}: not a version-{VERSION} '{FORMAT}' manifest; prepare the data again")
    return manifest


# -------------------------------------------------------------------------------- writing --

def find_splits(data_dir: str, valid_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[str]]:
    """The split `dataset.find_splits` gives on the original input, as file ids.

    Files skipped at prepare time are included (as they would be listed on the raw input), so
    that the seeded split is the same; `decode_prepared` then skips them with a warning.

    Returns:
      {'train', 'valid', 'test': [ids]}, each in the order of the raw input's paths.
    """
    m = read_manifest(data_dir)
    items = {**m["files"], **m["skipped"]}
    by_source = sorted(items, key=lambda i: items[i]["source"])
    if m["split_folders"]:
        splits = {s: [i for i in by_source if items[i]["split"] == s] for s in dataset_module().SPLITS}
    else:
        # find_splits keys the hash on paths relative to a directory input, else on the paths.
        key = (lambda i: i) if m["input_type"] == "directory" else (lambda i: items[i]["source"])
        back = {key(i): i for i in by_source}
        hashed = dataset_module().split_by_hash(list(back), valid_fraction, test_fraction, seed, root="")
        splits = {s: sorted((back[k] for k in keys), key=lambda i: items[i]["source"])
                  for s, keys in hashed.items()}
    if not any(splits.values()):
        raise dataset_module().NoAudioError(f"{data_dir}: the prepared manifest lists no audio files")
    return splits


def check_settings(manifest: dict, data_dir: str, sample_rate=None, normalize=None,
                   remove_dc=None) -> None:
    """Raises ConfigError, naming the flag and both values, if a given setting differs."""
    for flag, wanted in (("sample_rate", sample_rate), ("normalize", normalize),
                         ("remove_dc", remove_dc)):
        have = manifest["settings"][flag]
        if wanted is not None and wanted != have:
            raise ConfigError(
                f"--{flag}: the data in {data_dir} was prepared with --{flag}={have}, but this run "
                f"uses --{flag}={wanted}; use --{flag}={have}, or prepare the data again with "
                f"--{flag}={wanted}")


def decode_prepared(data_dir: str, ids: Sequence[str], postprocess: Callable | None = None, *,
                    sample_rate: int | None = None, normalize: str | None = None,
                    remove_dc: bool | None = None, strict: bool = False
                    ) -> list[tuple[str, np.ndarray]]:
    """Reads files of a prepared directory with tf.data, like `audio.decode_files` does raw files.

    Args:
      data_dir: a `prepare` output directory (local or gs://).
      ids: file ids as returned by `find_splits`.
      postprocess: optional graph function float32 [T] (int16 / 32767) -> tensor [T].
      sample_rate, normalize, remove_dc: if given, must equal the prepared settings.
      strict: a file skipped at prepare time raises instead of being skipped with a warning.

    Returns:
      [(id, array [T])] in the order of `ids`, without the files that prepare skipped.

    Raises:
      ConfigError: a setting differs from the manifest's, naming the flag and both values.
      FileNotFoundError: an id is not in the manifest.
      audio.AudioDecodeError: with strict=True, for the first id skipped at prepare time.
    """
    m = read_manifest(data_dir)
    check_settings(m, data_dir, sample_rate, normalize, remove_dc)
    unknown = [i for i in ids if i not in m["files"] and i not in m["skipped"]]
    if unknown:
        raise FileNotFoundError(f"{data_dir}: {len(unknown)} file(s) not in the prepared manifest, "
                                f"e.g. {unknown[0]!r}")
    wanted = [i for i in ids if i in m["files"]]
    for i in ids:
        if i in m["skipped"]:
            reason = f"skipped when prepared: {m['skipped'][i]['reason']}"
            if strict:
                raise audio.AudioDecodeError(i, reason)
            logging.warning("skipping %s: %s", i, reason)
    if not wanted:
        return []
    shard_ids = sorted({m["files"][i]["shard"] for i in wanted})
    paths = [os.path.join(data_dir, m["shards"][k]["name"]) for k in shard_ids]
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(wanted), tf.ones([len(wanted)], tf.int32)), 0)
    post = postprocess or (lambda x: x)
    spec = {"id": tf.io.FixedLenFeature([], tf.string),
            "audio": tf.io.FixedLenFeature([], tf.string),
            "num_samples": tf.io.FixedLenFeature([], tf.int64)}

    def decode(example):
        pcm = tf.io.decode_raw(example["audio"], tf.int16, little_endian=True)
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.size(pcm, out_type=tf.int64), example["num_samples"],
                message="prepared record has a wrong length")]):
            return example["id"], post(from_pcm16(pcm))

    ds = (tf.data.TFRecordDataset(paths, num_parallel_reads=min(len(paths), 4))
          .map(lambda r: tf.io.parse_single_example(r, spec))
          .filter(lambda e: table.lookup(e["id"]) > 0)
          .map(decode, num_parallel_calls=tf.data.AUTOTUNE))
    out = {i.decode(): x for i, x in ds.as_numpy_iterator()}
    return [(i, out[i]) for i in wanted]
