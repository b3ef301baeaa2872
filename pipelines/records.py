"""A corpus decoded once into sharded TFRecord files of int16 audio, and reading it back.

`prepare(...)` (the library side of `python -m pipelines.prepare`) lists the audio like
`dataset.find_splits` would, decodes, resamples and normalizes every file once with
`audio.decode_files`, and writes, under the output directory:

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
import logging as std_logging
import os
import re
import time
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines import audio
from samplernn_tf.config import ConfigError, DataConfig

MANIFEST = "manifest.json"
PROGRESS_DIR = "progress"
FORMAT = "samplernn-tf prepared audio"
VERSION = 1
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.tfrecord(\.tmp-.*)?$")
_DECODE_BATCH_SECONDS = 3600.0  # audio per decode_files call (~115 MB int16): bounds memory,
_MAX_DECODE_BATCH = 2048       # and amortizes the ~0.7 s that each call spends tracing


def _dataset():
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

def _read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path: str, value) -> None:
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
    manifest = _read_json(path)
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ConfigError(f"{path}: not a version-{VERSION} '{FORMAT}' manifest; prepare the data again")
    return manifest


# -------------------------------------------------------------------------------- writing --

def _input_files(input_path: str) -> tuple[list[tuple[str, str, str | None]], str, bool]:
    """Lists the input as `dataset.find_splits` does.

    Returns:
      ([(id, source path, split folder or None)] in processing order, input type, whether the
      input has train/valid/test folders). Input type is 'directory' (split keys are the ids,
      as in find_splits) or 'glob' (also a single file: split keys are the source paths).
    """
    gfile, splits = tf.io.gfile, _dataset().SPLITS
    if gfile.isdir(input_path):
        sub = {s: os.path.join(input_path, s) for s in splits}
        if all(gfile.isdir(p) for p in sub.values()):
            entries = []
            for s, path in sub.items():
                try:
                    found = audio.list_audio_files(path)
                except FileNotFoundError:
                    found = []
                entries += [(os.path.relpath(p, input_path), p, s) for p in found]
            return entries, "directory", True
        files = audio.list_audio_files(input_path)
        return [(os.path.relpath(p, input_path), p, None) for p in files], "directory", False
    files = audio.list_audio_files(input_path)
    magic = re.search(r"[*?\[]", input_path)
    base = input_path[:magic.start()] if magic else input_path
    base = base[:base.rfind("/")] if "/" in base else ""
    return [(os.path.relpath(p, base) if base else p, p, None) for p in files], "glob", False


def _example(file_id: str, pcm: np.ndarray, sample_rate: int) -> bytes:
    feature = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "id": feature(bytes_list=tf.train.BytesList(value=[file_id.encode()])),
        "audio": feature(bytes_list=tf.train.BytesList(value=[pcm.astype("<i2").tobytes()])),
        "num_samples": feature(int64_list=tf.train.Int64List(value=[len(pcm)])),
        "sample_rate": feature(int64_list=tf.train.Int64List(value=[sample_rate])),
    })).SerializeToString()


class _SkipReasons(std_logging.Handler):
    """Catches the reasons `audio.decode_files` logs for the files it skips ("skipping %s: %s")."""

    def __init__(self):
        super().__init__(std_logging.WARNING)
        self.reasons = {}

    def emit(self, record):
        if record.msg == "skipping %s: %s" and isinstance(record.args, tuple) and len(record.args) == 2:
            self.reasons[str(record.args[0])] = str(record.args[1])


class _Decoder:
    """Decodes the entries in order, in batches of about `_DECODE_BATCH_SECONDS` of audio."""

    def __init__(self, entries, sample_rate, normalize, remove_dc, strict):
        self.entries, self.args = entries, (sample_rate, normalize, remove_dc, strict)
        self.buffer, self.batch = {}, 8
        self.target = _DECODE_BATCH_SECONDS * sample_rate

    def get(self, pos: int):
        """-> int16 array, or the reason string of a bad file."""
        if pos not in self.buffer:
            self.buffer = {}
            paths = [e[1] for e in self.entries[pos:pos + self.batch]]
            rate, normalize, remove_dc, strict = self.args
            catcher = _SkipReasons()
            std_logging.getLogger("absl").addHandler(catcher)
            try:
                decoded = dict(audio.decode_files(paths, rate, normalize, remove_dc, strict=strict,
                                                  postprocess=to_pcm16))
            finally:
                std_logging.getLogger("absl").removeHandler(catcher)
            for i, p in enumerate(paths, start=pos):
                self.buffer[i] = decoded.get(p, catcher.reasons.get(p, "could not be decoded"))
            good = [len(a) for a in decoded.values()]
            if good:
                self.batch = int(np.clip(self.target / max(np.mean(good), 1.0), 1, _MAX_DECODE_BATCH))
        return self.buffer.pop(pos)


class _Progress:
    """A progress line: files, audio seconds, shards, speed, ETA (logged every ~10 s)."""

    def __init__(self, total_files: int):
        self.total, self.files, self.skipped, self.samples = total_files, 0, 0, 0
        self.written, self.reused = 0, 0
        self.start = self.last = time.time()

    def log(self, sample_rate: int, force: bool = False):
        now = time.time()
        if not force and now - self.last < 10:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        eta = (self.total - self.files) * elapsed / self.files if self.files else float("nan")
        logging.info("prepare: %d/%d files (%d skipped), %.1f s of audio, %d shards (%d written, "
                     "%d kept), %.1f s elapsed, ETA %.0f s", self.files, self.total, self.skipped,
                     self.samples / sample_rate, self.written + self.reused, self.written,
                     self.reused, elapsed, eta)


def _kept(output: str, record: dict | None, entries, pos: int, settings: dict) -> bool:
    """Whether a previous run's shard covers exactly the next files, with these settings."""
    if not record or record.get("settings") != settings:
        return False
    ids = set(record["files"]) | set(record["skipped"])
    if {e[0] for e in entries[pos:pos + len(ids)]} != ids:
        return False
    path = os.path.join(output, record["name"])
    return tf.io.gfile.exists(path) and tf.io.gfile.stat(path).length == record["bytes"]


def _previous_records(output: str) -> dict[int, dict]:
    """Shard records of earlier runs: progress/ files, else the manifest's shard entries."""
    records = {}
    manifest = os.path.join(output, MANIFEST)
    if tf.io.gfile.exists(manifest):
        m = _read_json(manifest)
        if m.get("version") == VERSION:
            for i, shard in enumerate(m.get("shards", [])):
                records[i] = {**shard, "settings": m.get("settings")}
    progress = os.path.join(output, PROGRESS_DIR)
    if tf.io.gfile.isdir(progress):
        for name in tf.io.gfile.listdir(progress):
            match = re.match(r"^shard-(\d+)\.json$", name)
            if match:
                records[int(match.group(1))] = _read_json(os.path.join(progress, name))
    return records


def prepare(input_path: str, output_dir: str, sample_rate: int, normalize: str = "peak",
            remove_dc: bool = True, shard_seconds: float = 3600.0, strict: bool = False) -> dict:
    """Decodes a corpus once into int16 TFRecord shards plus manifest.json. Resumable.

    Args:
      input_path: directory (with or without train/valid/test folders), glob or file; local
        or gs://.
      output_dir: where the shards and manifest go (created if needed).
      sample_rate, normalize, remove_dc: as in `DataConfig`; training must use the same.
      shard_seconds: audio per shard (a shard closes at the first file that reaches it).
      strict: a bad file is fatal instead of skipped with a warning.

    Returns:
      The manifest (also written to `output_dir/manifest.json`).

    Raises:
      ConfigError: a bad setting, naming its flag.
      FileNotFoundError: the input does not exist.
      dataset.NoAudioError: no audio found, or none decodable.
      audio.AudioDecodeError: with strict=True, the first bad file.
    """
    DataConfig(sample_rate=sample_rate, normalize=normalize, remove_dc=remove_dc)  # validates
    if not shard_seconds > 0:
        raise ConfigError(f"--shard_seconds: must be > 0, got {shard_seconds}")
    entries, input_type, split_folders = _input_files(input_path)
    if not entries:
        raise _dataset().NoAudioError(
            f"{input_path}: no audio files ({', '.join(audio.SUPPORTED_EXTENSIONS)}) found")
    settings = {"sample_rate": sample_rate, "normalize": normalize, "remove_dc": bool(remove_dc)}
    gfile = tf.io.gfile
    gfile.makedirs(os.path.join(output_dir, PROGRESS_DIR))
    previous = _previous_records(output_dir)
    decoder = _Decoder(entries, sample_rate, normalize, remove_dc, strict)
    progress = _Progress(len(entries))
    target = shard_seconds * sample_rate
    shards, pos = [], 0
    while pos < len(entries):
        k = len(shards)
        record = previous.get(k)
        if _kept(output_dir, record, entries, pos, settings):
            logging.info("keeping complete shard %s (%d files)", record["name"], len(record["files"]))
            shards.append(record)
            pos += len(record["files"]) + len(record["skipped"])
            progress.files, progress.reused = pos, progress.reused + 1
            progress.skipped += len(record["skipped"])
            progress.samples += sum(record["num_samples"])
            continue
        if gfile.exists(os.path.join(output_dir, MANIFEST)):
            gfile.remove(os.path.join(output_dir, MANIFEST))  # no longer describes the shards
        name = shard_name(k)
        path = os.path.join(output_dir, name)
        tmp = f"{path}.tmp-{os.getpid()}"
        record = {"name": name, "files": [], "num_samples": [], "skipped": {}}
        total = 0
        with tf.io.TFRecordWriter(tmp) as writer:
            while pos < len(entries) and total < target:
                file_id = entries[pos][0]
                out = decoder.get(pos)
                pos += 1
                progress.files += 1
                if isinstance(out, str):
                    record["skipped"][file_id] = out
                    progress.skipped += 1
                else:
                    writer.write(_example(file_id, out, sample_rate))
                    record["files"].append(file_id)
                    record["num_samples"].append(len(out))
                    total += len(out)
                    progress.samples += len(out)
                progress.log(sample_rate)
        gfile.rename(tmp, path, overwrite=True)
        record.update(bytes=gfile.stat(path).length, settings=settings)
        _write_json(os.path.join(output_dir, PROGRESS_DIR, f"shard-{k:05d}.json"), record)
        shards.append(record)
        progress.written += 1
        logging.info("wrote %s: %d files, %.1f s", name, len(record["files"]), total / sample_rate)
    _remove_stale(output_dir, len(shards))
    manifest = _manifest(input_path, input_type, split_folders, entries, shards, settings,
                         shard_seconds)
    if not manifest["num_files"]:
        raise _dataset().NoAudioError(f"{input_path}: none of the {len(entries)} audio files "
                                      f"could be decoded; see the warnings above")
    _write_json(os.path.join(output_dir, MANIFEST), manifest)
    progress.log(sample_rate, force=True)
    return manifest


def _remove_stale(output_dir: str, num_shards: int) -> None:
    """Deletes shards (and their progress records) beyond `num_shards`, and temporary files."""
    for folder, pattern in ((output_dir, _SHARD_RE), (os.path.join(output_dir, PROGRESS_DIR),
                                                      re.compile(r"^shard-(\d+)\.json(\.tmp-.*)?$"))):
        for name in tf.io.gfile.listdir(folder):
            match = pattern.match(name)
            if match and (int(match.group(1)) >= num_shards or match.group(2)):
                tf.io.gfile.remove(os.path.join(folder, name))


def _manifest(input_path, input_type, split_folders, entries, shards, settings, shard_seconds):
    rate = settings["sample_rate"]
    where = {e[0]: e for e in entries}
    files, skipped, shard_entries = {}, {}, []
    for k, s in enumerate(shards):
        for file_id, n in zip(s["files"], s["num_samples"]):
            files[file_id] = {"source": where[file_id][1], "split": where[file_id][2],
                              "num_samples": n, "shard": k}
        for file_id, reason in s["skipped"].items():
            skipped[file_id] = {"source": where[file_id][1], "split": where[file_id][2],
                                "reason": reason}
        shard_entries.append({key: s[key] for key in ("name", "files", "num_samples", "skipped", "bytes")})
        shard_entries[-1]["seconds"] = sum(s["num_samples"]) / rate
    total = sum(f["num_samples"] for f in files.values())
    return {
        "format": FORMAT, "version": VERSION,
        "input": input_path, "input_type": input_type, "split_folders": split_folders,
        "settings": settings, "shard_seconds": shard_seconds,
        "num_files": len(files), "num_skipped": len(skipped), "num_shards": len(shards),
        "num_samples": total, "total_seconds": total / rate,
        "shards": shard_entries, "files": files, "skipped": skipped,
    }


# -------------------------------------------------------------------------------- reading --

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
        splits = {s: [i for i in by_source if items[i]["split"] == s] for s in _dataset().SPLITS}
    else:
        # find_splits keys the hash on paths relative to a directory input, else on the paths.
        key = (lambda i: i) if m["input_type"] == "directory" else (lambda i: items[i]["source"])
        back = {key(i): i for i in by_source}
        hashed = _dataset().split_by_hash(list(back), valid_fraction, test_fraction, seed, root="")
        splits = {s: sorted((back[k] for k in keys), key=lambda i: items[i]["source"])
                  for s, keys in hashed.items()}
    if not any(splits.values()):
        raise _dataset().NoAudioError(f"{data_dir}: the prepared manifest lists no audio files")
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
