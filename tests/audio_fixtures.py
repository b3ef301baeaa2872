"""Helpers that write small test audio files (libsndfile through `soundfile`), for any test.

All writers take `audio` as float [T] or [T, C] in [-1, 1] and return the path they wrote.
"""

from __future__ import annotations

import os

import numpy as np
import soundfile


def sine(freq: float, seconds: float, rate: int, channels: int = 1,
         amplitude: float = 0.5) -> np.ndarray:
    """A sine of `freq` Hz, float32 [T, channels], T = round(seconds * rate), same in every channel."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1)


def _write(path, audio, rate, fmt, subtype):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    soundfile.write(path, np.asarray(audio, np.float32), rate, format=fmt, subtype=subtype)
    return path


def write_wav(path: str, audio, rate: int, subtype: str = "PCM_16") -> str:
    """WAV; subtype one of 'PCM_U8', 'PCM_16', 'PCM_24', 'PCM_32', 'FLOAT', 'DOUBLE'."""
    return _write(path, audio, rate, "WAV", subtype)


def write_flac(path: str, audio, rate: int, subtype: str = "PCM_16") -> str:
    """FLAC; subtype one of 'PCM_S8', 'PCM_16', 'PCM_24'."""
    return _write(path, audio, rate, "FLAC", subtype)


def write_ogg(path: str, audio, rate: int) -> str:
    """Ogg Vorbis (lossy)."""
    return _write(path, audio, rate, "OGG", "VORBIS")


def write_mp3(path: str, audio, rate: int, id3_size: int = 0, id3_fill: bytes = b"\0") -> str:
    """MP3 (lossy; MPEG-1 at 32/44.1/48 kHz, MPEG-2 below). `id3_size` > 0 prepends an ID3v2
    tag with that many bytes of `id3_fill` repeated (tags may hold bytes that look like audio)."""
    _write(path, audio, rate, "MP3", "MPEG_LAYER_III")
    if id3_size:
        size = bytes((id3_size >> s) & 0x7F for s in (21, 14, 7, 0))  # syncsafe integer
        with open(path, "rb") as f:
            data = f.read()
        body = (id3_fill * id3_size)[:id3_size]
        write_bytes(path, b"ID3\x04\x00\x00" + size + body + data)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Any bytes (empty, garbage, truncated copies of real files)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def truncate(path: str, out_path: str, fraction: float = 0.5) -> str:
    """Writes the first `fraction` of the bytes of `path` to `out_path`."""
    with open(path, "rb") as f:
        data = f.read()
    return write_bytes(out_path, data[:int(len(data) * fraction)])


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """Frequency (Hz) of the largest FFT bin of mono [T] `x` (Hann window)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * rate / len(x)
