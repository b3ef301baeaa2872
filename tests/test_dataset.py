"""Streams, resets, padding and splits of the tf.data pipeline, on synthetic code arrays."""

import os

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines import dataset
from samplernn_tf.config import Config, DataConfig, ModelConfig


def make_config(frame_sizes=(8, 2), seq_len=16, q_levels=32768):
    return Config(model=ModelConfig(frame_sizes=frame_sizes, dim=8, q_levels=q_levels),
                  data=DataConfig(seq_len=seq_len))


def make_corpus(lengths):
    """Item i holds distinct increasing codes, so every target can be traced to its item."""
    codes, start = [], 1
    for n in lengths:
        codes.append(np.arange(start, start + n, dtype=np.int16))
        start += n + 1
    return dataset.Corpus(names=[f"item{i}" for i in range(len(lengths))], codes=codes, sample_rate=16000)


def row_items(batches, row, corpus):
    """Splits one row's stream at its reset flags into the played items' real targets."""
    played = []
    for b in batches:
        if b["reset"][row]:
            played.append([])
        played[-1].extend(b["targets"][row][b["weights"][row] > 0].tolist())
    return played


class StreamTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(((8, 2), 16, 2), ((16,), 32, 3), ((16, 4, 2), 16, 4))
    def test_train_rows_play_whole_items_with_resets(self, frame_sizes, seq_len, rows):
        lengths = [5, 16, 17, 40, 90, 3, 33]
        corpus = make_corpus(lengths)
        cfg = make_config(frame_sizes, seq_len)
        ds = dataset.train_dataset(corpus, cfg, batch_size=rows, seed=7)
        batches = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(60)]
        b0 = batches[0]
        F = frame_sizes[-1]
        self.assertEqual(b0["targets"].shape, (rows, seq_len))
        self.assertEqual(b0["sample_inputs"].shape, (rows, seq_len, F))
        for f, t in zip(frame_sizes, b0["tier_inputs"]):
            self.assertEqual(t.shape, (rows, seq_len // f, f))
        self.assertTrue(np.all(b0["reset"]))  # every row starts a file
        by_first = {int(c[0]): c.tolist() for c in corpus.codes}
        seen = []
        for r in range(rows):
            items = row_items(batches, r, corpus)
            for k, played in enumerate(items[:-1]):  # the last one may be cut by take()
                self.assertIn(played[0], by_first)
                self.assertEqual(played, by_first[played[0]])
                seen.append(played[0])
        # Over the first epoch's worth of items, each item is played once before any repeats.
        first_epoch = []
        for r in range(rows):
            first_epoch += [p[0] for p in row_items(batches, r, corpus)[:len(lengths) // rows]]
        self.assertEqual(len(first_epoch), len(set(first_epoch)))
        self.assertEqual(set(seen), set(by_first))

    def test_windows_continue_within_a_row(self):
        corpus = make_corpus([200])
        cfg = make_config((8, 2), 16)
        batches = list(dataset.train_dataset(corpus, cfg, batch_size=1, seed=0).take(5))
        for prev, nxt in zip(batches, batches[1:]):
            self.assertFalse(nxt["reset"][0])
            self.assertEqual(int(nxt["targets"][0, 0]), int(prev["targets"][0, -1]) + 1)
            # The top tier's first frame is the previous window's last B targets (overlap).
            self.assertAllEqual(nxt["tier_inputs"][0][0, 0], prev["targets"][0, -8:])

    def test_front_padding_is_silence(self):
        cfg = make_config((8, 2), 16)
        corpus = make_corpus([20])
        b = next(iter(dataset.train_dataset(corpus, cfg, batch_size=1, seed=0)))
        pad = 16384  # zero_code for Q = 32768
        self.assertAllEqual(b["tier_inputs"][0][0, 0], [pad] * 8)
        self.assertAllEqual(b["targets"][0, :3], corpus.codes[0][:3])
        self.assertAllEqual(b["sample_inputs"][0, 0], [pad, pad])

    def test_seeded_order_is_reproducible(self):
        corpus = make_corpus([10, 20, 30, 40, 50])
        cfg = make_config()
        a = [b["targets"].numpy() for b in dataset.train_dataset(corpus, cfg, 2, seed=3).take(12)]
        b = [b["targets"].numpy() for b in dataset.train_dataset(corpus, cfg, 2, seed=3).take(12)]
        c = [b["targets"].numpy() for b in dataset.train_dataset(corpus, cfg, 2, seed=4).take(12)]
        self.assertAllEqual(np.stack(a), np.stack(b))
        self.assertNotAllEqual(np.stack(a), np.stack(c))

    def test_shards_partition_rows(self):
        corpus = make_corpus([10, 20, 30, 40, 50, 60])
        cfg = make_config()
        full = next(iter(dataset.train_dataset(corpus, cfg, 4, seed=1)))["targets"].numpy()
        half0 = next(iter(dataset.train_dataset(corpus, cfg, 2, seed=1, num_shards=2, shard_index=0)))
        half1 = next(iter(dataset.train_dataset(corpus, cfg, 2, seed=1, num_shards=2, shard_index=1)))
        self.assertAllEqual(np.concatenate([half0["targets"], half1["targets"]]), full)

    @parameterized.parameters(1, 2, 3, 8)
    def test_eval_covers_every_sample_once(self, rows):
        lengths = [5, 16, 17, 40, 90, 3, 33]
        corpus = make_corpus(lengths)
        cfg = make_config((8, 2), 16)
        ds, steps = dataset.eval_dataset(corpus, cfg, batch_size=rows)
        batches = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]
        self.assertLen(batches, steps)
        got = []
        for r in range(batches[0]["targets"].shape[0]):
            got += [tuple(p) for p in row_items(batches, r, corpus) if p]
        self.assertCountEqual(got, [tuple(c.tolist()) for c in corpus.codes])
        total = sum(float(b["weights"].sum()) for b in batches)
        self.assertEqual(total, sum(lengths))
        # Deterministic.
        again = [b["targets"].numpy() for b in dataset.eval_dataset(corpus, cfg, rows)[0]]
        self.assertAllEqual(np.stack(again), np.stack([b["targets"] for b in batches]))

    def test_eval_rows_balance(self):
        rows = dataset.eval_rows([100, 10, 10, 10, 10, 60], seq_len=10, rows=2)
        self.assertEqual(sorted(i for r in rows for i in r), list(range(6)))
        self.assertEqual(rows, [[0], [5, 1, 2, 3, 4]])


class ChunkTest(tf.test.TestCase):

    def test_chunk_seconds_cuts_files_into_items(self):
        from tests import audio_fixtures
        path = audio_fixtures.write_wav(os.path.join(self.get_temp_dir(), "long.wav"),
                                        audio_fixtures.sine(220.0, 2.5, 8000), 8000)
        short = audio_fixtures.write_wav(os.path.join(self.get_temp_dir(), "short.wav"),
                                         audio_fixtures.sine(330.0, 0.5, 8000), 8000)
        whole_cfg = Config(model=ModelConfig(frame_sizes=(8, 2), dim=8, q_levels=256),
                           data=DataConfig(sample_rate=8000, seq_len=16))
        chunk_cfg = whole_cfg.replace(data=DataConfig(sample_rate=8000, seq_len=16, chunk_seconds=1.0))
        whole = dataset.load_corpus([path, short], whole_cfg)
        chunks = dataset.load_corpus([path, short], chunk_cfg)
        self.assertEqual(chunks.names, [f"{path}@0s", f"{path}@1s", f"{path}@2s", short])
        self.assertAllEqual(chunks.lengths, [8000, 8000, 4000, 4000])
        self.assertAllEqual(np.concatenate(chunks.codes[:3]), whole.codes[0])
        # Each chunk is a file of its own: its first window resets the row.
        ds, steps = dataset.eval_dataset(chunks, chunk_cfg, batch_size=4)
        starts = sum(int(np.sum(b["reset"].numpy() & (b["weights"].numpy().sum(1) > 0))) for b in ds)
        self.assertEqual(starts, 4)


class SplitTest(tf.test.TestCase):

    def test_split_is_deterministic_and_disjoint(self):
        files = [f"/data/dir/f{i:03d}.wav" for i in range(50)]
        a = dataset.split_by_hash(files, 0.1, 0.2, seed=5, root="/data")
        b = dataset.split_by_hash(list(reversed(files)), 0.1, 0.2, seed=5, root="/data")
        self.assertEqual(a, b)
        self.assertEqual((len(a["valid"]), len(a["test"]), len(a["train"])), (5, 10, 35))
        all_files = a["train"] + a["valid"] + a["test"]
        self.assertCountEqual(all_files, files)
        c = dataset.split_by_hash(files, 0.1, 0.2, seed=6, root="/data")
        self.assertNotEqual(a["test"], c["test"])
        # Moving the corpus elsewhere does not change the split (paths are taken relative to root).
        moved = dataset.split_by_hash([f.replace("/data", "/mnt/x") for f in files], 0.1, 0.2, 5, "/mnt/x")
        self.assertEqual(moved["test"], [f.replace("/data", "/mnt/x") for f in a["test"]])

    def test_small_corpora_keep_a_training_file(self):
        self.assertEqual(dataset.split_by_hash(["a"], 0.1, 0.1, 0)["train"], ["a"])
        s = dataset.split_by_hash(["a", "b", "c"], 0.1, 0.1, 0)
        self.assertEqual([len(s[k]) for k in ("train", "valid", "test")], [1, 1, 1])
        s = dataset.split_by_hash(["a", "b", "c"], 0.0, 0.0, 0)
        self.assertEqual(len(s["train"]), 3)
