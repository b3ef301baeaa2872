"""Decoding, mixing, resampling, normalization, file listing and robust corpus decoding."""

import os
import re

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pipelines import audio
from tests import audio_fixtures as fx

RATE = 16000


def decode(path):
    """Decodes a file eagerly (graph mode is covered by the tf.data tests below)."""
    x, rate = audio.decode_audio(tf.io.read_file(path), os.path.splitext(path)[1])
    return x.numpy(), int(rate)


def best_lag(x, ref, max_lag):
    """Lag (samples) at which x best matches ref: x[lag:] ~ ref."""
    n = len(ref) - max_lag
    scores = [np.dot(x[lag:lag + n], ref[:n]) for lag in range(max_lag)]
    return int(np.argmax(scores))


class DecodeTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.named_parameters(
        ("wav_u8", fx.write_wav, "PCM_U8", ".wav", 1, 1 / 64),
        ("wav_16", fx.write_wav, "PCM_16", ".wav", 2, 1e-4),
        ("wav_24", fx.write_wav, "PCM_24", ".wav", 1, 1e-6),
        ("wav_32", fx.write_wav, "PCM_32", ".WAV", 2, 1e-6),
        ("wav_float", fx.write_wav, "FLOAT", ".wav", 3, 1e-7),
        ("wav_double", fx.write_wav, "DOUBLE", ".wave", 1, 1e-7),
        ("flac_8", fx.write_flac, "PCM_S8", ".flac", 1, 1 / 64),
        ("flac_16", fx.write_flac, "PCM_16", ".flac", 2, 1e-4),
        ("flac_24", fx.write_flac, "PCM_24", ".flac", 1, 1e-6))
    def test_lossless(self, writer, subtype, ext, channels, atol):
        want = fx.sine(440, 0.25, 22050, channels)
        want[:, -1] *= -1  # channels must not be swapped or interleaved wrongly
        path = writer(os.path.join(self.get_temp_dir(), "x" + ext), want, 22050, subtype)
        got, rate = decode(path)
        self.assertEqual(rate, 22050)
        self.assertEqual(got.dtype, np.float32)
        self.assertAllClose(got, want, atol=atol, rtol=0)

    @parameterized.named_parameters(
        ("ogg_mono", fx.write_ogg, ".ogg", 16000, 1), ("ogg_stereo", fx.write_ogg, ".oga", 44100, 2),
        ("mp3_mono_mpeg2", fx.write_mp3, ".mp3", 16000, 1),
        ("mp3_stereo_mpeg1", fx.write_mp3, ".mp3", 44100, 2))
    def test_lossy(self, writer, ext, rate, channels):
        want = fx.sine(1000, 0.5, rate, channels)
        path = writer(os.path.join(self.get_temp_dir(), "x" + ext), want, rate)
        got, got_rate = decode(path)
        self.assertEqual(got_rate, rate)
        self.assertEqual(got.shape[1], channels)
        # Codecs may add a delay and pad to whole frames (MP3: up to ~2 frames of 1152).
        self.assertBetween(got.shape[0], len(want), len(want) + 2 * 1152 + 1105)
        mono = got.mean(1)
        self.assertAllClose(fx.dominant_frequency(mono[:len(want)], rate), 1000, atol=rate / len(want))
        lag = best_lag(mono, want[:, 0], 1200)
        mid = slice(len(want) // 4, len(want) * 3 // 4)  # away from codec fade-in/out
        corr = np.corrcoef(mono[lag:][mid], want[mid, 0])[0, 1]
        self.assertGreater(corr, 0.95)

    def test_mp3_with_id3_tag(self):
        want = fx.sine(1000, 0.5, 22050)
        fake_48k_frame_header = b"\xff\xfb\x94\x00"  # inside the tag: must be skipped
        path = fx.write_mp3(os.path.join(self.get_temp_dir(), "tagged.mp3"), want, 22050,
                            id3_size=3000, id3_fill=fake_48k_frame_header)
        got, rate = decode(path)
        self.assertEqual(rate, 22050)
        self.assertAllClose(fx.dominant_frequency(got[:len(want), 0], rate), 1000, atol=50)

    def test_wav_with_extra_chunks_and_odd_sizes(self):
        # LIST chunk of odd size (pad byte) before `data`, and a truncated data chunk.
        want = fx.sine(300, 0.1, RATE)
        path = fx.write_wav(os.path.join(self.get_temp_dir(), "plain.wav"), want, RATE)
        with open(path, "rb") as f:
            data = f.read()
        at = data.index(b"data")
        extra = b"LIST" + (5).to_bytes(4, "little") + b"hello\0"
        x, rate = decode(fx.write_bytes(os.path.join(self.get_temp_dir(), "x.wav"),
                                        data[:at] + extra + data[at:-101]))
        self.assertEqual(rate, RATE)
        self.assertAllClose(x[:, 0], want[:len(want) - 51, 0], atol=1e-4)

    @parameterized.parameters((1.0, 0.0), (-1.0, 1.0))
    def test_stereo_to_mono(self, right_sign, want_gain):
        x = fx.sine(440, 0.1, RATE, 2)
        x[:, 1] *= right_sign
        path = fx.write_wav(os.path.join(self.get_temp_dir(), "s.wav"), x, RATE, "FLOAT")
        y = audio.load_audio(tf.constant(path), ".wav", RATE, "none", remove_dc=False).numpy()
        self.assertAllClose(y, x[:, 0] * (1 - want_gain), atol=1e-6)

    def test_unsupported_extension(self):
        with self.assertRaisesRegex(ValueError, "unsupported"):
            audio.decode_audio(tf.constant(b""), ".aiff")


class ResampleTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters((44100, 16000), (8000, 16000), (22050, 16000), (48000, 16000),
                              (11025, 16000), (16000, 8000))
    def test_length_and_frequency(self, rate_in, rate_out):
        freq = 1000
        x = fx.sine(freq, 0.5, rate_in)[:, 0]
        y = audio.resample(x, tf.constant(rate_in), rate_out).numpy()
        self.assertAllClose(len(y), len(x) * rate_out / rate_in, atol=1)
        self.assertAllClose(fx.dominant_frequency(y, rate_out), freq, atol=rate_out / len(y))
        ideal = fx.sine(freq, len(y) / rate_out, rate_out)[:, 0]
        self.assertAllClose(y[100:-100], ideal[100:-100], atol=1e-3)  # no delay, flat passband

    def test_anti_aliasing(self):
        x = fx.sine(12000, 0.5, 44100)[:, 0]  # above the 8 kHz Nyquist of the output
        y = audio.resample(x, tf.constant(44100), 16000).numpy()
        self.assertLess(np.abs(y[100:-100]).max(), 1e-3)

    def test_identity_at_same_rate(self):
        x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
        self.assertAllEqual(audio.resample(x, tf.constant(16000), 16000), x)

    @parameterized.parameters(44101, 8001)
    def test_odd_rates_are_rounded(self, rate_in):  # the exact ratio needs a huge filter bank
        x = fx.sine(500, 0.2, rate_in)[:, 0]
        y = audio.resample(x, tf.constant(rate_in), RATE).numpy()
        self.assertAllClose(len(y), len(x) * RATE / rate_in, atol=2)
        ideal = fx.sine(500, len(y) / RATE, RATE)[:, 0]
        self.assertAllClose(y[100:-100], ideal[100:-100], atol=0.05)  # pitch error < 0.6%

    def test_target_rate_without_small_factors(self):
        with self.assertRaisesRegex(ValueError, "16001"):
            audio.resample(tf.zeros([10]), tf.constant(44100), 16001)

    def test_load_audio_in_tf_data(self):
        d = self.get_temp_dir()
        paths = [fx.write_flac(os.path.join(d, "a.flac"), fx.sine(440, 0.5, 44100, 2), 44100),
                 fx.write_flac(os.path.join(d, "b.flac"), fx.sine(440, 0.25, 8000), 8000, "PCM_24")]
        ds = tf.data.Dataset.from_tensor_slices(paths).map(
            lambda p: audio.load_audio(p, ".flac", RATE), num_parallel_calls=2)
        got = list(ds.as_numpy_iterator())
        self.assertEqual([len(y) for y in got], [8000, 4000])
        for y in got:
            self.assertAllClose(np.abs(y).max(), 1.0, atol=1e-6)  # peak-normalized
            self.assertAllClose(fx.dominant_frequency(y, RATE), 440, atol=RATE / len(y))


class NormalizeTest(tf.test.TestCase, parameterized.TestCase):

    @parameterized.parameters(
        ("none", False, [0.1, -0.25, 0.2, 1.5], [0.1, -0.25, 0.2, 1.0]),
        ("peak", False, [0.1, -0.25, 0.2], [0.4, -1.0, 0.8]),
        ("peak", True, [1.5, 0.5, 1.0], [1.0, -1.0, 0.0]),
        ("none", True, [1.5, 0.5, 1.0], [0.5, -0.5, 0.0]),
        ("min-max", False, [0.0, 1.0, 2.0, 0.5], [-1.0, 0.0, 1.0, -0.5]),
        ("min-max", True, [3.0, 5.0, 4.0], [-1.0, 1.0, 0.0]))
    def test_known_values(self, mode, remove_dc, x, want):
        self.assertAllClose(audio.normalize(tf.constant(x), mode, remove_dc), want, atol=1e-6)

    @parameterized.product(mode=["none", "peak", "min-max"], remove_dc=[False, True],
                           length=[0, 1, 100])
    def test_silence_stays_zero(self, mode, remove_dc, length):
        y = audio.normalize(tf.zeros([length]), mode, remove_dc).numpy()
        self.assertEqual(y.shape, (length,))
        self.assertAllEqual(y, np.zeros(length))

    def test_bad_mode(self):
        with self.assertRaisesRegex(ValueError, "normalize mode"):
            audio.normalize(tf.zeros([3]), "rms", True)


class ListFilesTest(tf.test.TestCase):

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.get_temp_dir(), "corpus")
        for rel in ["a.wav", "sub/b.FLAC", "sub/deeper/c.Mp3", "sub/d.ogg", "notes.txt", "sub/e.aiff"]:
            fx.write_bytes(os.path.join(self.root, rel), b"x")

    def test_recursive_case_insensitive_and_filtered(self):
        want = [os.path.join(self.root, r)
                for r in ["a.wav", "sub/b.FLAC", "sub/d.ogg", "sub/deeper/c.Mp3"]]
        self.assertEqual(audio.list_audio_files(self.root), sorted(want))

    def test_glob(self):
        got = audio.list_audio_files(os.path.join(self.root, "sub", "*"))
        want = [os.path.join(self.root, "sub", r) for r in ["b.FLAC", "d.ogg", "deeper/c.Mp3"]]
        self.assertEqual(got, sorted(want))
        self.assertEqual(audio.list_audio_files(os.path.join(self.root, "*.wav")),
                         [os.path.join(self.root, "a.wav")])

    def test_single_file(self):
        path = os.path.join(self.root, "sub", "d.ogg")
        self.assertEqual(audio.list_audio_files(path), [path])

    def test_missing(self):
        for missing in ["nothing_here", "nothing*.wav"]:
            with self.assertRaisesRegex(FileNotFoundError, "nothing"):
                audio.list_audio_files(os.path.join(self.root, missing))


BAD_FILES = {  # name -> (how to make it, words the warning must contain)
    "empty.wav": (lambda p, good: fx.write_bytes(p, b""), "empty file (0 bytes)"),
    "garbage.wav": (lambda p, good: fx.write_bytes(p, b"not audio at all " * 20), "not a WAV file"),
    "truncated.flac": (lambda p, good: fx.truncate(good["b.flac"], p), "corrupt or truncated FLAC"),
    "notes.aiff": (lambda p, good: fx.write_bytes(p, b"FORM"), "unsupported extension '.aiff'"),
    "no_samples.wav": (lambda p, good: fx.write_wav(p, np.zeros((0, 1)), RATE), "no audio samples"),
    "missing.wav": (None, "unreadable"),
}


class DecodeFilesTest(tf.test.TestCase, parameterized.TestCase):

    def setUp(self):
        super().setUp()
        d = self.get_temp_dir()
        self.good = {
            "a.wav": fx.write_wav(os.path.join(d, "a.wav"), fx.sine(440, 0.2, RATE), RATE),
            "b.flac": fx.write_flac(os.path.join(d, "b.flac"), fx.sine(330, 0.3, 44100, 2), 44100),
            "c.wav": fx.write_wav(os.path.join(d, "c.wav"), fx.sine(220, 0.2, 8000), 8000, "PCM_24"),
        }
        self.bad = {}
        for name, (make, _) in BAD_FILES.items():
            self.bad[name] = os.path.join(d, name)
            if make:
                make(self.bad[name], self.good)

    def test_skips_bad_files_with_one_warning_each(self):
        g, b = self.good, self.bad
        paths = [b["empty.wav"], g["c.wav"], b["garbage.wav"], b["truncated.flac"], g["a.wav"],
                 b["notes.aiff"], b["no_samples.wav"], g["b.flac"], b["missing.wav"]]
        with self.assertLogs(level="WARNING") as logs:
            out = audio.decode_files(paths, RATE)
        self.assertEqual([p for p, _ in out], [g["c.wav"], g["a.wav"], g["b.flac"]])
        self.assertEqual([len(x) for _, x in out], [3200, 3200, 4800])
        for name, (_, words) in BAD_FILES.items():
            hits = [m for m in logs.output if f"skipping {b[name]}: " in m]
            self.assertLen(hits, 1, f"{name}: {logs.output}")
            self.assertIn(words, hits[0])
            self.assertNotIn("Traceback", hits[0])
        self.assertLen(logs.output, len(BAD_FILES))

    @parameterized.parameters(*BAD_FILES)
    def test_strict_raises_naming_the_file(self, name):
        paths = [self.bad[name], self.good["a.wav"]]
        pattern = "^" + re.escape(f"{self.bad[name]}: ") + ".*" + re.escape(BAD_FILES[name][1])
        with self.assertRaisesRegex(audio.AudioDecodeError, pattern):
            audio.decode_files(paths, RATE, strict=True)

    def test_postprocess_and_order(self):
        paths = [self.good["b.flac"], self.good["a.wav"], self.good["c.wav"]]
        coded = audio.decode_files(paths, RATE, normalize_mode="none", remove_dc=False,
                                   postprocess=lambda x: tf.cast(tf.round(x * 1000), tf.int16))
        self.assertEqual([p for p, _ in coded], paths)
        for (_, q), freq, seconds in zip(coded, [330, 440, 220], [0.3, 0.2, 0.2]):
            self.assertEqual(q.dtype, np.int16)
            want = fx.sine(freq, seconds, RATE)[:, 0] * 1000
            self.assertAllClose(q[50:-50], want[50:-50], atol=1.6)  # rounding + resampling
