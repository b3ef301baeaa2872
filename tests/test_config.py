"""Config validation, JSON round trip, and the flags-to-config errors."""

import json

import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from absl.testing import parameterized

from flags import train as train_flags
from samplernn_tf.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig

FLAGS = flags.FLAGS


def setUpModule():
    if "frame_sizes" not in FLAGS:
        train_flags.define_flags()
    FLAGS(["test", "--data_dir=x", "--logdir=y"])


class ConfigTest(tf.test.TestCase, parameterized.TestCase):

    def test_json_round_trip(self):
        cfg = Config(model=ModelConfig(frame_sizes=[64, 16, 4], dim=32, rnn_type="lstm", q_levels=64),
                     data=DataConfig(q_type="a-law", seq_len=128, chunk_seconds=8.0),
                     train=TrainConfig(batch_size=4, lr_schedule="cosine", mixed_precision="bf16"))
        again = Config.from_json(cfg.to_json())
        self.assertEqual(again, cfg)
        self.assertEqual(again.model.frame_sizes, (64, 16, 4))
        logdir = self.get_temp_dir()
        cfg.save(logdir)
        self.assertEqual(Config.load(logdir), cfg)

    def test_unknown_fields_are_errors(self):
        d = json.loads(Config().to_json())
        d["model"]["hidden"] = 3
        with self.assertRaisesRegex(ConfigError, "hidden"):
            Config.from_dict(d)

    def test_missing_config_names_the_file(self):
        with self.assertRaisesRegex(FileNotFoundError, "config.json"):
            Config.load(self.get_temp_dir() + "/nowhere")

    @parameterized.parameters(
        (dict(frame_sizes=(8, 3)), "--frame_sizes"),
        (dict(frame_sizes=(2, 8)), "--frame_sizes"),
        (dict(frame_sizes=()), "--frame_sizes"),
        (dict(q_levels=1), "--q_levels"),
        (dict(rnn_type="rnn"), "--rnn_type"),
        (dict(dropout=1.0), "--dropout"),
    )
    def test_model_errors_name_the_flag(self, kwargs, flag):
        with self.assertRaisesRegex(ConfigError, f"^{flag}:"):
            ModelConfig(**kwargs)

    def test_seq_len_must_fit_top_frame(self):
        with self.assertRaisesRegex(ConfigError, "^--seq_len:.*top frame size 8"):
            Config(model=ModelConfig(frame_sizes=(8, 2)), data=DataConfig(seq_len=100))


class FlagsTest(tf.test.TestCase, parameterized.TestCase):

    def test_defaults_build_a_config(self):
        cfg = train_flags.config_from_flags()
        self.assertEqual(cfg, Config())

    @flagsaver.flagsaver(frame_sizes=["16", "4"], seq_len=1024, dim=64, q_type="linear",
                         batch_size=8, mixed_precision="bf16")
    def test_flags_reach_the_config(self):
        cfg = train_flags.config_from_flags()
        self.assertEqual(cfg.model.frame_sizes, (16, 4))
        self.assertEqual((cfg.data.seq_len, cfg.model.dim, cfg.data.q_type), (1024, 64, "linear"))
        self.assertEqual((cfg.train.batch_size, cfg.train.mixed_precision), (8, "bf16"))

    @parameterized.parameters(
        (dict(frame_sizes=["8", "x"]), "--frame_sizes"),
        (dict(frame_sizes=["8", "3"]), "--frame_sizes"),
        (dict(seq_len=12), "--seq_len"),
        (dict(q_levels=1), "--q_levels"),
        (dict(batch_size=0), "--batch_size"),
        (dict(learning_rate=0.0), "--learning_rate"),
        (dict(valid_fraction=0.6, test_fraction=0.5), "--valid_fraction"),
        (dict(sample_rate=10), "--sample_rate"),
    )
    def test_bad_flags_name_the_flag(self, overrides, flag):
        with flagsaver.flagsaver(**overrides):
            with self.assertRaisesRegex(ConfigError, f"^{flag}:"):
                train_flags.config_from_flags()

    def test_enum_flags_reject_unknown_values(self):
        with self.assertRaisesRegex(flags.IllegalFlagValueError, "rnn_type"):
            FLAGS["rnn_type"].parse("transformer")
