#!/usr/bin/env python3
"""Regenerate the bundled demo corpus in data/demo/ from public-domain scores.

Pipeline, per piece:
  1. music21 loads a J.S. Bach four-part chorale from its bundled corpus, sets
     a fixed tempo and a General MIDI patch (Church Organ or String Ensemble 1)
     on every part, and writes a MIDI file;
  2. fluidsynth renders the MIDI at 44.1 kHz with the FluidR3_GM soundfont;
  3. sox downmixes to mono, resamples to 16 kHz, lightly trims leading and
     trailing silence, caps the length, fades out, peak-normalises to -1 dBFS
     and writes 16-bit FLAC.

Requirements (not project dependencies; only needed to regenerate the corpus):
  apt-get install -y fluidsynth fluid-soundfont-gm sox libsox-fmt-base
  pip install music21          # into a scratch venv; tested with music21 10.5

Usage:
  python tools/make_demo_corpus.py [--out data/demo]

The choice of pieces, patches and every processing parameter is fixed, so the
output is deterministic (sox runs with -R, its "repeatable" dither seed).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

# General MIDI programs (0-based): 19 = Church Organ, 48 = String Ensemble 1.
PATCHES = {"organ": 19, "strings": 48}

# (split, BWV number, patch). Standalone chorales BWV 253-273, one harmonisation
# per hymn tune, so no tune appears in more than one split.
PIECES: list[tuple[str, int, str]] = [
    ("train", 253, "organ"),
    ("train", 254, "strings"),
    ("train", 255, "organ"),
    ("train", 256, "strings"),
    ("train", 257, "organ"),
    ("train", 258, "strings"),
    ("train", 259, "organ"),
    ("train", 260, "strings"),
    ("train", 262, "organ"),
    ("train", 263, "strings"),
    ("train", 264, "organ"),
    ("train", 265, "strings"),
    ("train", 266, "organ"),
    ("train", 267, "strings"),
    ("valid", 268, "strings"),
    ("valid", 269, "organ"),
    ("test", 270, "organ"),
    ("test", 273, "strings"),
]

SPLITS = ("train", "valid", "test")


def run(cmd: list[str]) -> str:
    """Run a command, failing loudly; return its stdout."""
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return result.stdout


def write_midi(bwv: int, program: int, tempo_qpm: float, path: Path) -> None:
    """Write chorale `bwv` as MIDI with `program` on every part.

    music21 puts all parts sharing a program on one MIDI channel, where a
    unison between two voices would cut notes short; so each part's track is
    moved to its own channel (1, 2, 3, ...) after translation.
    """
    from music21 import corpus, instrument, tempo
    from music21.midi import translate

    score = corpus.parse(f"bach/bwv{bwv}")
    for part in score.parts:
        for old in list(part.recurse().getElementsByClass(instrument.Instrument)):
            old.activeSite.remove(old)
        inst = instrument.Instrument()
        inst.midiProgram = program
        part.insert(0, inst)
        for old in list(part.recurse().getElementsByClass(tempo.MetronomeMark)):
            old.activeSite.remove(old)
        part.insert(0, tempo.MetronomeMark(number=tempo_qpm))
    midi_file = translate.streamToMidiFile(score)
    for channel, track in enumerate(midi_file.tracks[1:], start=1):
        for event in track.events:
            if event.channel is not None:
                event.channel = channel
    midi_file.open(str(path), "wb")
    midi_file.write()
    midi_file.close()


def render(midi: Path, wav: Path, soundfont: Path) -> None:
    """Render MIDI to a 44.1 kHz float WAV (gain kept low so nothing clips)."""
    run(["fluidsynth", "-n", "-i", "-q", "-g", "0.3", "-r", "44100",
         "-O", "float", "-T", "wav", "-F", str(wav), str(soundfont), str(midi)])


def to_flac(wav: Path, flac: Path, seconds: float, tmp: Path) -> float:
    """Mono 16 kHz, trim silence, cap, fade out, normalise, 16-bit FLAC."""
    mono = tmp / "mono.wav"
    run(["sox", "-R", str(wav), "-e", "floating-point", "-b", "32", str(mono),
         "remix", "-", "rate", "-v", "16000",
         "silence", "1", "0.02", "-55d", "reverse",
         "silence", "1", "0.02", "-55d", "reverse",
         "trim", "0", f"{seconds}"])
    length = float(run(["soxi", "-D", str(mono)]))
    fade_out = min(1.0, length / 4)
    run(["sox", "-R", str(mono), "-b", "16", "-e", "signed-integer", str(flac),
         "fade", "q", "0.01", f"{length}", f"{fade_out}", "norm", "-1"])
    return float(run(["soxi", "-D", str(flac)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "data" / "demo",
                        help="output directory (default: %(default)s)")
    parser.add_argument("--soundfont", type=Path, default=DEFAULT_SOUNDFONT,
                        help="SF2 soundfont (default: %(default)s)")
    # Dense organ/string audio costs ~25 KB/s as FLAC: 18 x 11 s stays under 5 MB.
    parser.add_argument("--seconds", type=float, default=11.0,
                        help="cap on each piece's length (default: %(default)s)")
    parser.add_argument("--tempo", type=float, default=76.0,
                        help="tempo in quarter notes per minute (default: %(default)s)")
    args = parser.parse_args(argv)

    for tool in ("fluidsynth", "sox", "soxi"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found; see this script's docstring")
    if not args.soundfont.is_file():
        sys.exit(f"error: soundfont {args.soundfont} not found")

    for split in SPLITS:
        (args.out / split).mkdir(parents=True, exist_ok=True)
        for old in (args.out / split).glob("*.flac"):
            old.unlink()

    total_s = 0.0
    total_bytes = 0
    print("| split | file | BWV | patch | duration (s) | size (KiB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="demo-corpus-") as tmpdir:
        tmp = Path(tmpdir)
        for split, bwv, patch in PIECES:
            name = f"bwv{bwv}_{patch}.flac"
            flac = args.out / split / name
            midi, wav = tmp / "piece.mid", tmp / "piece.wav"
            write_midi(bwv, PATCHES[patch], args.tempo, midi)
            render(midi, wav, args.soundfont)
            duration = to_flac(wav, flac, args.seconds, tmp)
            size = flac.stat().st_size
            total_s += duration
            total_bytes += size
            print(f"| {split} | `{split}/{name}` | {bwv} | {patch} "
                  f"(GM {PATCHES[patch]}) | {duration:.2f} | {size / 1024:.0f} |")
    print(f"\n{len(PIECES)} files, {total_s:.1f} s ({total_s / 60:.2f} min), "
          f"{total_bytes / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
