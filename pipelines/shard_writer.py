"""Writing a prepared corpus: `prepare(...)`, the library side of `python -m pipelines.prepare`.

Decodes every file once (`audio.decode_files`), writes int16 TFRecord shards of about
`shard_seconds` each, one progress record per complete shard (so a re-run keeps what is done),
and `manifest.json` last. The format and the reading side are in `pipelines.records`.
"""

from __future__ import annotations

import logging as std_logging
import os
import re
import time

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines import audio
from pipelines import records
from samplernn_tf.config import ConfigError, DataConfig

_SHARD_RE = re.compile(r"^shard-(\d{5,})\.tfrecord(\.tmp-.*)?$")
_DECODE_BATCH_SECONDS = 3600.0  # audio per decode_files call (~115 MB int16): bounds memory,
_MAX_DECODE_BATCH = 2048       # and amortizes the ~0.7 s that each call spends tracing


def _input_files(input_path: str) -> tuple[list[tuple[str, str, str | None]], str, bool]:
    """Lists the input as `dataset.find_splits` does.

    Returns:
      ([(id, source path, split folder or None)] in processing order, input type, whether the
      input has train/valid/test folders). Input type is 'directory' (split keys are the ids,
      as in find_splits) or 'glob' (also a single file: split keys are the source paths).
    """
    gfile, splits = tf.io.gfile, records.dataset_module().SPLITS
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
                                                  postprocess=records.to_pcm16))
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
    found = {}
    manifest = os.path.join(output, records.MANIFEST)
    if tf.io.gfile.exists(manifest):
        m = records.read_json(manifest)
        if m.get("version") == records.VERSION:
            for i, shard in enumerate(m.get("shards", [])):
                found[i] = {**shard, "settings": m.get("settings")}
    progress = os.path.join(output, records.PROGRESS_DIR)
    if tf.io.gfile.isdir(progress):
        for name in tf.io.gfile.listdir(progress):
            match = re.match(r"^shard-(\d+)\.json$", name)
            if match:
                found[int(match.group(1))] = records.read_json(os.path.join(progress, name))
    return found


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
        raise records.dataset_module().NoAudioError(
            f"{input_path}: no audio files ({', '.join(audio.SUPPORTED_EXTENSIONS)}) found")
    settings = {"sample_rate": sample_rate, "normalize": normalize, "remove_dc": bool(remove_dc)}
    gfile = tf.io.gfile
    gfile.makedirs(os.path.join(output_dir, records.PROGRESS_DIR))
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
        if gfile.exists(os.path.join(output_dir, records.MANIFEST)):
            gfile.remove(os.path.join(output_dir, records.MANIFEST))  # no longer describes the shards
        name = records.shard_name(k)
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
        records.write_json(os.path.join(output_dir, records.PROGRESS_DIR, f"shard-{k:05d}.json"), record)
        shards.append(record)
        progress.written += 1
        logging.info("wrote %s: %d files, %.1f s", name, len(record["files"]), total / sample_rate)
    _remove_stale(output_dir, len(shards))
    manifest = _manifest(input_path, input_type, split_folders, entries, shards, settings,
                         shard_seconds)
    if not manifest["num_files"]:
        raise records.dataset_module().NoAudioError(f"{input_path}: none of the {len(entries)} audio files "
                                      f"could be decoded; see the warnings above")
    records.write_json(os.path.join(output_dir, records.MANIFEST), manifest)
    progress.log(sample_rate, force=True)
    return manifest


def _remove_stale(output_dir: str, num_shards: int) -> None:
    """Deletes shards (and their progress records) beyond `num_shards`, and temporary files."""
    for folder, pattern in ((output_dir, _SHARD_RE), (os.path.join(output_dir, records.PROGRESS_DIR),
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
        "format": records.FORMAT, "version": records.VERSION,
        "input": input_path, "input_type": input_type, "split_folders": split_folders,
        "settings": settings, "shard_seconds": shard_seconds,
        "num_files": len(files), "num_skipped": len(skipped), "num_shards": len(shards),
        "num_samples": total, "total_seconds": total / rate,
        "shards": shard_entries, "files": files, "skipped": skipped,
    }


# -------------------------------------------------------------------------------- reading --
