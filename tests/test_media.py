"""Tests of webapp.services.media (probe, audio, thumbnails, preview, colours) against the
real ffmpeg, on generated clips."""

from __future__ import annotations

import dataclasses
import io
import itertools
import pickle
import re
import struct
import subprocess
from collections import deque
from pathlib import Path
from typing import Any

import ffmpeg
import pytest
import webvtt

from tests import mediagen
from tests.helpers import small_disk, top_level_boxes
from webapp.services import ffrun, integrity, mediainput
from webapp.services.ffrun import MediaError
from webapp.services.keyframes import keyframe_gap
from webapp.services.media.audio import extract_audio
from webapp.services.media.colours import Hdr, hdr_colours
from webapp.services.media.preview import audio_copyable, transcode_preview
from webapp.services.media.probe import first_streams, probe
from webapp.services.media.thumbnails import (
    Storyboard,
    make_poster,
    make_storyboard,
    plan_storyboard,
)
from webapp.services.opening import black_opening
from webapp.services.transcription import TranscriptionError

SPEECH = "Open the window and let the fresh air come into the room."


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gen")


@pytest.fixture(scope="module")
def clip(gen_dir: Path) -> Path:
    return mediagen.make_video(gen_dir / "clip.mp4", duration=4.0)


@pytest.fixture(scope="module")
def hd_clip(gen_dir: Path) -> Path:
    return mediagen.make_video(gen_dir / "hd.mp4", duration=6.0, size="1280x720")


@pytest.fixture(scope="module")
def silent_clip(gen_dir: Path) -> Path:
    return mediagen.make_video(gen_dir / "silent.mp4", duration=3.0, audio=False)


@pytest.fixture(scope="module")
def speech_m4a(gen_dir: Path) -> Path:
    return mediagen.make_audio_only(gen_dir / "speech.m4a", SPEECH)


@pytest.fixture(scope="module")
def truncated_faststart(gen_dir: Path) -> Path:
    whole = mediagen.make_video(gen_dir / "whole.mp4", duration=6.0, faststart=True)
    return mediagen.make_truncated(whole, gen_dir / "cut.mp4")


class Recorder:
    """A progress callback that remembers what it was told."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def __call__(self, fraction: float) -> None:
        self.values.append(fraction)

    def assert_well_formed(self) -> None:
        assert self.values, "no progress reported"
        assert all(0.0 <= v <= 1.0 for v in self.values)
        assert self.values == sorted(self.values), "progress went backwards"
        assert self.values[-1] == 1.0


def streams(path: Path) -> dict[str, dict[str, Any]]:
    """The first stream of each type, straight from ffprobe (not from the code under test)."""
    found: dict[str, dict[str, Any]] = {}
    for stream in ffmpeg.probe(str(path))["streams"]:
        found.setdefault(stream["codec_type"], stream)
    return found


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".part" in p.name)


# --- probe -----------------------------------------------------------------------------


def test_probe_video_with_audio(clip: Path) -> None:
    info = probe(clip)
    assert info.duration == pytest.approx(4.0, abs=0.1)
    assert (info.width, info.height) == (320, 240)
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.has_video and info.has_audio
    assert info.frame_rate == pytest.approx(25.0)
    assert "mp4" in info.format_name


def test_probe_video_without_audio(silent_clip: Path) -> None:
    info = probe(silent_clip)
    assert info.has_video and not info.has_audio
    assert info.audio_codec is None
    assert info.duration == pytest.approx(3.0, abs=0.1)


def test_probe_audio_only(speech_m4a: Path) -> None:
    info = probe(speech_m4a)
    assert info.has_audio and not info.has_video
    assert info.audio_codec == "aac"
    assert (info.width, info.height, info.video_codec, info.frame_rate) == (None,) * 4
    assert info.duration is not None and 2.0 < info.duration < 6.0


def test_probe_reports_displayed_size_of_rotated_video(clip: Path, tmp_path: Path) -> None:
    # Phones store portrait video as landscape frames plus a 90-degree rotation flag.
    rotated = tmp_path / "portrait.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(clip), "-c", "copy",
         "-metadata:s:v:0", "rotate=90", str(rotated)],
        check=True,
    )
    info = probe(rotated)
    assert (info.width, info.height) == (240, 320)
    preview = tmp_path / "preview.mp4"
    transcode_preview(rotated, preview, info.duration)
    video = streams(preview)["video"]
    assert (video["width"], video["height"]) == (240, 320)  # upright, as in the probe


def test_non_square_pixels_come_out_at_the_aspect_they_are_shown(tmp_path: Path) -> None:
    # Anamorphic DVD/HDV/editor exports store 720x480 pixels shown at 16:9 (SAR 32:27).
    # Browsers ignore a JPEG's pixel aspect: what they show must be square pixels.
    src = tmp_path / "anamorphic.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", "testsrc2=size=720x480:rate=25:duration=4", "-vf", "setsar=32/27",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(src)],
        check=True,
    )
    info = probe(src)
    assert (info.width, info.height) == (853, 480)  # as shown, like ffprobe's 16:9
    shown = 16 / 9

    def aspect(picture: dict[str, Any]) -> float:
        assert picture.get("sample_aspect_ratio", "1:1") in ("1:1", "0:1"), picture
        return picture["width"] / picture["height"]

    poster = tmp_path / "poster.jpg"
    make_poster(src, poster, info.duration)
    assert aspect(streams(poster)["video"]) == pytest.approx(shown, rel=0.01)
    preview = tmp_path / "preview.mp4"
    transcode_preview(src, preview, info.duration, has_audio=False)
    video = streams(preview)["video"]
    assert video["height"] == 480 and video["width"] % 2 == 0
    assert aspect(video) == pytest.approx(shown, rel=0.01)
    board = make_storyboard(src, tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt",
                            info.duration, info.width, info.height)
    assert board.tile_width / board.tile_height == pytest.approx(shown, rel=0.02)
    assert aspect(streams(tmp_path / "storyboard.jpg")["video"]) == pytest.approx(
        board.columns * board.tile_width / (board.rows * board.tile_height))


# Matroska keeps ffmpeg's cover art as a one-frame MJPEG track, stated to last 63 ms.
@pytest.mark.parametrize(("suffix", "codecs"), [(".mp3", ["-c:v", "copy"]),
                                                (".mkv", ["-c:a", "copy", "-c:v", "mjpeg"])])
def test_probe_ignores_cover_art(speech_m4a: Path, tmp_path: Path, suffix: str,
                                 codecs: list[str]) -> None:
    cover = mediagen.make_image(tmp_path / "cover.png")
    with_art = tmp_path / f"song{suffix}"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(speech_m4a), "-i", str(cover),
         "-map", "0:a", "-map", "1:v", *codecs, "-disposition:v", "attached_pic",
         str(with_art)],
        check=True,
    )
    assert "video" in streams(with_art)
    info = probe(with_art)
    assert info.has_audio and not info.has_video


def _text_file(path: Path) -> None:
    path.write_text("this is not a video\n" * 20)


def _png(path: Path) -> None:
    mediagen.make_image(path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("notes.mp4", _text_file, "not a playable audio or video file: invalid data"),
        ("picture.png", _png, "not a playable audio or video file: it is an image"),
        ("picture.jpg", _png, "not a playable audio or video file: it is an image"),
        ("empty.mp4", _empty, "not a playable audio or video file"),
    ],
)
def test_probe_rejects_non_media(tmp_path: Path, name: str, make: Any, reason: str) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(MediaError, match=reason) as caught:
        probe(path)
    message = str(caught.value)
    assert len(message) <= 320 and "\n" not in message and name not in message
    # No server paths in user-facing errors, nor in the raw detail kept for bug reports.
    assert str(tmp_path) not in message and str(tmp_path) not in (caught.value.detail or "")


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="not a playable audio or video file: no such file"):
        probe(tmp_path / "gone.mp4")


# --- extract_audio -----------------------------------------------------------------------


def test_extract_audio_is_16k_mono_pcm(hd_clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "audio.wav"
    progress = Recorder()
    extract_audio(hd_clip, dst, probe(hd_clip).duration, progress)
    audio = streams(dst)["audio"]
    assert audio["codec_name"] == "pcm_s16le"
    assert (int(audio["sample_rate"]), audio["channels"]) == (16000, 1)
    assert float(audio["duration"]) == pytest.approx(6.0, abs=0.1)
    # Extraction takes well under ffmpeg's report period, so only the shape is checked here;
    # test_transcode_reports_intermediate_progress checks the in-between values.
    progress.assert_well_formed()
    assert leftovers(tmp_path) == []


def test_extract_audio_without_audio_stream(silent_clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "audio.wav"
    with pytest.raises(MediaError) as caught:
        extract_audio(silent_clip, dst, 3.0)
    assert str(caught.value) == "The audio could not be extracted: the file has no audio track."
    assert "matches no streams" in caught.value.detail
    assert list(tmp_path.iterdir()) == []


def test_extract_audio_replaces_existing_output(clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "audio.wav"
    dst.write_bytes(b"stale")
    extract_audio(clip, dst, 4.0)
    assert streams(dst)["audio"]["codec_name"] == "pcm_s16le"


# --- transcode_preview -------------------------------------------------------------------


def test_transcode_hd_to_480p(hd_clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "preview.mp4"
    transcode_preview(hd_clip, dst, 6.0)
    found = streams(dst)
    assert found["video"]["codec_name"] == "h264"
    assert found["video"]["pix_fmt"] == "yuv420p"
    assert found["audio"]["codec_name"] == "aac"
    assert found["video"]["height"] == 480
    assert found["video"]["width"] % 2 == 0
    assert found["video"]["width"] == pytest.approx(480 * 16 / 9, abs=2)
    boxes = top_level_boxes(dst)
    assert boxes.index("moov") < boxes.index("mdat"), boxes  # faststart: playable while loading
    assert leftovers(tmp_path) == []


def audio_packets(path: Path) -> str:
    """An MD5 of the first audio track's packets as stored (no decoding), from ffmpeg."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0",
                           "-c", "copy", "-f", "streamhash", "-hash", "md5", "-"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().split("MD5=")[1]


def test_transcode_keeps_a_browser_playable_aac_track_as_it_is(hd_clip: Path,
                                                               tmp_path: Path) -> None:
    # hd_clip's tone is AAC-LC at 96 kb/s, as phones and cameras record it.
    assert streams(hd_clip)["audio"]["profile"] == "LC"
    dst = tmp_path / "preview.mp4"
    transcode_preview(hd_clip, dst, 6.0)
    assert audio_packets(dst) == audio_packets(hd_clip)
    audio, video = streams(dst)["audio"], streams(dst)["video"]
    assert float(audio["start_time"]) == pytest.approx(float(video["start_time"]), abs=0.05)
    assert float(audio["duration"]) == pytest.approx(6.0, abs=0.05)


@pytest.mark.parametrize("suffix, codecs, channels, why", [
    (".mp4", ["-c:a", "aac", "-b:a", "320k", "-ac", "2"], 2, "over 192 kb/s"),
    (".mp4", ["-c:a", "aac", "-ac", "6", "-b:a", "160k"], 2, "5.1 channels"),
    (".mkv", ["-c:a", "libmp3lame", "-b:a", "128k"], 1, "MP3"),
    (".mkv", ["-c:a", "libopus", "-b:a", "64k", "-ac", "2"], 2, "Opus"),
])
def test_transcode_encodes_other_audio_to_aac_128k(tmp_path: Path, suffix: str,
                                                   codecs: list[str], channels: int,
                                                   why: str) -> None:
    src = tmp_path / f"source{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi", "-i",
                    "anoisesrc=duration=4:sample_rate=48000", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", *codecs, str(src)], check=True)
    info = probe(src)
    assert not audio_copyable(src, info.format_name), why
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    audio = streams(dst)["audio"]
    assert (audio["codec_name"], audio["profile"]) == ("aac", "LC"), why
    assert audio_packets(dst) != audio_packets(src)
    assert int(audio["bit_rate"]) < 150_000, why
    assert int(audio["sample_rate"]) == 48000, why
    assert audio["channels"] == channels, why  # mono and stereo as they are, 5.1 in stereo


def channel_levels(media: Path) -> list[float]:
    """The RMS level (dBFS) of each channel of a file's first audio track, from ffmpeg's
    astats; -inf for a silent one."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(media), "-map",
                           "0:a:0", "-af", "astats=measure_overall=none:measure_perchannel="
                           "RMS_level", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    return [float(level) for level in re.findall(r"RMS level dB: (\S+)", done.stderr)]


@pytest.mark.parametrize(("suffix", "layout", "codecs"), [
    (".mp4", "5.1", ["-c:a", "aac", "-b:a", "384k"]),  # a film's or a camera's surround
    (".mkv", "7.1", ["-c:a", "flac"]),
])
def test_surround_sound_is_mixed_down_to_stereo_in_the_preview(tmp_path: Path, suffix: str,
                                                                layout: str,
                                                                codecs: list[str]) -> None:
    # A tone on the centre channel alone, where a surround mix puts the dialogue.
    src = tmp_path / f"surround{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=3", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000:duration=3", "-filter_complex",
                    f"[1]pan={layout}|FC=c0[a]", "-map", "0:v", "-map", "[a]", "-c:v",
                    "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", *codecs,
                    str(src)], check=True)
    assert streams(src)["audio"]["channel_layout"] == layout
    centre = max(channel_levels(src))
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    audio = streams(dst)["audio"]
    assert (audio["codec_name"], audio["channels"], audio["channel_layout"]) == (
        "aac", 2, "stereo")
    assert int(audio["bit_rate"]) < 150_000
    # The centre is heard on both sides, 3 dB down (ITU-R BS.775), not lost or doubled.
    assert channel_levels(dst) == [pytest.approx(centre - 3, abs=1)] * 2
    assert float(audio["duration"]) == pytest.approx(3.0, abs=0.05)


def frame_times(media: Path) -> list[float]:
    """The presentation times (seconds) of a file's first video stream's frames, in order,
    as ffprobe reads its packets."""
    done = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0",
                           "-show_entries", "packet=pts_time", "-of", "csv=p=0", str(media)],
                          capture_output=True, text=True, check=True)
    return sorted(float(line.strip(",")) for line in done.stdout.split())


@pytest.mark.parametrize(("suffix", "rate", "shown"), [
    (".mp4", 240, 60),  # a phone's slow motion
    (".mkv", 120, 60),  # (Matroska's timestamps in milliseconds: 8 or 9 ms apart)
    (".mp4", 100, 50),  # every second frame: evenly spaced, not 60 with a jerk
    (".mp4", 60, 60),
    (".mp4", 30, 30),
])
def test_high_frame_rate_video_is_previewed_at_60_fps_at_most(tmp_path: Path, suffix: str,
                                                              rate: int, shown: int) -> None:
    # (sound to encode, at 44.1 kHz: the video's timing options must leave it alone)
    src = tmp_path / f"fast{suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=640x360:rate={rate}:duration=2", "-f", "lavfi", "-i",
                    "sine=sample_rate=44100:duration=2", "-c:v", "libx264", "-preset",
                    "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "libmp3lame", str(src)],
                   check=True)
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    video, audio = streams(dst)["video"], streams(dst)["audio"]
    times = frame_times(dst)
    assert len(times) == 2 * shown
    assert float(video["duration"]) == pytest.approx(2.0, abs=0.02)
    assert (audio["codec_name"], audio["sample_rate"], audio["time_base"]) == (
        "aac", "44100", "1/44100")
    assert float(audio["duration"]) == pytest.approx(2.0, abs=0.05)
    assert all(b - a == pytest.approx(1 / shown, abs=0.002)
               for a, b in itertools.pairwise(times))
    # x264 states the level of what it encodes (3.0: 640x360 at 30, 3.1 up to 66 fps),
    # not that of 240 fps (4.0), past what some phones' decoders take
    assert video["level"] <= 31


@pytest.mark.parametrize(("parts", "kept"), [
    # A phone's variable rate: 30 fps, 0.5 s at 120 (a quick pan), 30 fps again; the pan
    # comes out at 60 fps, every other frame (r_frame_rate 120: capped).
    (((30, 1.5), (120, 0.5), (30, 1.5)), 45 + 30 + 45),
    # A phone in low light: 30 fps, a second at 15, 30 again (r_frame_rate 30: not capped,
    # and MP4's default constant rate showed each of the 15 slow frames twice).
    (((30, 1.0), (15, 1.0), (30, 1.0)), 30 + 15 + 30),
])
def test_variable_frame_rate_video_keeps_its_frames_and_their_times(
        tmp_path: Path, parts: tuple[tuple[int, float], ...], kept: int) -> None:
    src = tmp_path / "variable.mp4"
    inputs = "".join(f"[{i}]" for i in range(len(parts)))
    subprocess.run(["ffmpeg", "-v", "error",
                    *[arg for rate, length in parts
                      for arg in ("-f", "lavfi", "-i",
                                  f"testsrc2=size=320x240:rate={rate}:duration={length}")],
                    "-filter_complex", f"{inputs}concat=n={len(parts)}[v]", "-map", "[v]",
                    "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt",
                    "yuv420p", str(src)], check=True)
    source = frame_times(src)
    assert len(source) == sum(round(rate * length) for rate, length in parts)
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, has_audio=False, format_name=info.format_name)
    shown = frame_times(dst)
    # No frame repeated to make a constant rate (ffmpeg's fps filter would make 208 of the
    # first, 60 a second; MP4's default 90 of the second); the rest as it was.
    assert len(shown) == kept
    fast = [t for t in source if 1.5 < t < 2.0] if parts[1][0] > 60 else []
    expected = sorted([t for t in source if t not in fast] + fast[1::2])
    assert shown == pytest.approx(expected, abs=0.009)


@pytest.mark.parametrize("rate", [30, 120])
def test_a_picture_that_starts_after_the_sound_does_so_in_the_preview(tmp_path: Path,
                                                                      rate: int) -> None:
    """A camera or an editor's export whose picture starts 25 ms after its sound: the
    preview keeps the gap (an MP4 edit list, which Chromium honours: its first frame's
    mediaTime is 0.025 while currentTime, the sound's and the captions' clock, starts at
    0), at every rate. Made constant-rate, a 30 fps source had its first frame shown twice
    and every other frame moved 8 ms late."""
    video = mediagen.make_video(tmp_path / "video.mp4", duration=0.5, rate=rate, audio=False)
    src = tmp_path / "late.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-itsoffset", "0.025", "-i", str(video),
                    "-f", "lavfi", "-i", "sine=sample_rate=48000:duration=0.5", "-map", "0:v",
                    "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(src)], check=True)
    source = frame_times(src)
    assert source[0] == pytest.approx(0.025, abs=0.001)
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    found = streams(dst)
    assert float(found["audio"]["start_time"]) == 0.0
    assert float(ffmpeg.probe(str(dst))["format"]["start_time"]) == 0.0
    shown = frame_times(dst)
    assert shown == pytest.approx(source[::2] if rate > 60 else source, abs=0.001)


def test_transcode_brings_studio_sound_down_to_48_khz(tmp_path: Path) -> None:
    # 96 kHz / 24-bit from a field recorder or a DAW, muxed with the picture by an editor:
    # the preview's AAC stays within the 8-48 kHz that audio_copyable takes for playable.
    src = tmp_path / "studio.mov"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=3", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=96000:duration=3", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "pcm_s24le",
                    str(src)], check=True)
    assert streams(src)["audio"]["sample_rate"] == "96000"
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    audio = streams(dst)["audio"]
    assert (audio["codec_name"], audio["profile"], audio["sample_rate"]) == (
        "aac", "LC", "48000")
    assert float(audio["duration"]) == pytest.approx(3.0, abs=0.05)


def test_transcode_carries_adts_aac_from_mpeg_ts_into_mp4(tmp_path: Path) -> None:
    # A camera's or a broadcast recorder's .ts: AAC in ADTS frames, which MP4 stores without
    # their headers (ffmpeg's muxer strips them when it copies).
    src = tmp_path / "recording.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi", "-i",
                    "sine=frequency=440:sample_rate=48000:duration=4", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a",
                    "96k", "-f", "mpegts", str(src)], check=True)
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    assert audio_copyable(src, info.format_name)
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(dst), "-map",
                              "0:a:0", "-f", "null", "-"], capture_output=True, text=True)
    assert decoded.returncode == 0 and decoded.stderr == "", decoded.stderr
    assert float(streams(dst)["audio"]["duration"]) == pytest.approx(4.0, abs=0.1)


def test_transcode_reports_intermediate_progress(hd_clip: Path, tmp_path: Path) -> None:
    progress = Recorder()
    # One thread makes the encode take long enough for several progress reports.
    transcode_preview(hd_clip, tmp_path / "preview.mp4", 6.0, progress, threads=1)
    progress.assert_well_formed()
    assert any(0.0 < v < 1.0 for v in progress.values), progress.values


def test_transcode_never_upscales(clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "preview.mp4"
    transcode_preview(clip, dst, 4.0)
    video = streams(dst)["video"]
    assert (video["width"], video["height"]) == (320, 240)


def test_transcode_without_audio(silent_clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "preview.mp4"
    transcode_preview(silent_clip, dst, 3.0, has_audio=False)
    assert set(streams(dst)) == {"video"}


@pytest.mark.parametrize(("duration", "rate"), [(0.3, 25), (5.0, 1)])
def test_silent_videos_of_few_frames_are_not_called_cut(tmp_path: Path, duration: float,
                                                        rate: int) -> None:
    # A 0.3 s clip, a slideshow at one picture a second: ffmpeg's last reported time lags
    # the end by x264's held-back frames and the last frame's length (no sound to carry it).
    src = mediagen.make_video(tmp_path / "few.mp4", duration=duration, rate=rate,
                              audio=False)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, probe(src).duration, has_audio=False)
    assert float(streams(dst)["video"]["duration"]) == pytest.approx(duration, abs=0.05)


@pytest.mark.parametrize(("size", "shown"), [
    # (a tracking pixel, a test: H.264 in 4:4:4 takes odd sizes) The preview came out 0
    # pixels high (trunc(1/2)*2) and failed as "ffmpeg stopped with an error".
    ("1x1", (2, 2)), ("9x1", (18, 2)),
    # A banner, a panorama: it was previewed 4000 wide, past what phones' decoders take.
    ("4000x200", (1920, 96)),
    ("200x4000", (24, 480)),  # (as before)
])
def test_videos_of_extreme_sizes_are_previewed_within_bounds(
        tmp_path: Path, size: str, shown: tuple[int, int]) -> None:
    src = tmp_path / "extreme.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x64:rate=25:duration=0.4",
                    "-vf", f"scale={size.replace('x', ':')},setsar=1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p",
                    str(src)], check=True)
    info = probe(src)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, has_audio=False, format_name=info.format_name)
    video = streams(dst)["video"]
    assert (video["width"], video["height"]) == shown
    assert len(frame_times(dst)) == 10


def test_cancelling_from_progress_callback(hd_clip: Path, tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancel(fraction: float) -> None:
        if fraction > 0:
            raise Cancelled

    dst = tmp_path / "preview.mp4"
    with pytest.raises(Cancelled):  # the caller's own exception, not wrapped
        transcode_preview(hd_clip, dst, 6.0, cancel)
    assert list(tmp_path.iterdir()) == []


def test_transcode_failure_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "notes.mp4"
    _text_file(src)
    dst = tmp_path / "preview.mp4"
    with pytest.raises(MediaError) as caught:
        transcode_preview(src, dst, 4.0)
    assert str(caught.value) == ("The preview could not be encoded: the media data is damaged.")
    assert "Invalid data found" in caught.value.detail
    assert str(tmp_path) not in caught.value.detail
    assert [p.name for p in tmp_path.iterdir()] == ["notes.mp4"]


# --- poster ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "max_width", "size"),
    [("hd_clip", 1280, (1280, 720)), ("hd_clip", 640, (640, 360)), ("clip", 1280, (320, 240))],
)
def test_poster_is_a_scaled_jpeg(
    request: pytest.FixtureRequest, tmp_path: Path, source: str, max_width: int, size: tuple
) -> None:
    src: Path = request.getfixturevalue(source)
    dst = tmp_path / "poster.jpg"
    make_poster(src, dst, probe(src).duration, max_width=max_width)
    assert dst.read_bytes()[:2] == b"\xff\xd8"  # JPEG start-of-image marker
    video = streams(dst)["video"]
    assert (video["width"], video["height"]) == size
    assert leftovers(tmp_path) == []


def rgb_at(picture: Path, x: int, y: int, w: int, h: int) -> tuple[int, ...]:
    """The mean colour of a box of a picture (its first frame), as a JPEG decoder or a
    player reads it (ffmpeg converts by the picture's own colour tags)."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(picture), "-frames:v", "1", "-vf",
         f"crop={w}:{h}:{x}:{y},scale=1:1:flags=area,format=rgb24", "-f", "rawvideo", "-"],
        capture_output=True, check=True)
    return tuple(done.stdout[:3])


def test_poster_and_storyboard_keep_the_colours_of_hd_video(tmp_path: Path) -> None:
    # Phones and cameras tag their video BT.709; a JPEG is read as BT.601.
    colour = (32, 160, 64)
    src = tmp_path / "green.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", "color=c=0x{:02X}{:02X}{:02X}:size=1280x720:rate=25:duration=4".format(*colour),
         "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-colorspace", "bt709",
         "-color_primaries", "bt709", "-color_trc", "bt709", str(src)],
        check=True,
    )
    assert streams(src)["video"]["color_space"] == "bt709"
    info = probe(src)
    preview = tmp_path / "preview.mp4"
    transcode_preview(src, preview, info.duration, has_audio=False)
    poster = tmp_path / "poster.jpg"
    make_poster(src, poster, info.duration)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, info.width, info.height)
    for what, seen_as in [("preview", rgb_at(preview, 100, 100, 64, 64)),
                          ("poster", rgb_at(poster, 100, 100, 64, 64)),
                          ("tile", rgb_at(sprite, 40, 20, board.tile_width // 2,
                                          board.tile_height // 2))]:
        assert all(abs(a - b) <= 6 for a, b in zip(seen_as, colour, strict=True)), (
            what, seen_as)


# Where make_patches_video's four patches are, as boxes (x, y, w, h) inside each, in a
# 640x360 picture (poster and preview) and in a 160x90 tile.
PATCH_BOXES = [(100, 50, 64, 64), (420, 50, 64, 64), (100, 230, 64, 64), (420, 230, 64, 64)]
TILE_PATCH_BOXES = [(20, 10, 40, 25), (100, 10, 40, 25), (20, 55, 40, 25), (100, 55, 40, 25)]
# How far (levels of 255, each channel) a patch of the tone-mapped HDR picture may be from
# the same patch of the SDR picture through the same step: 4 %, which nobody sees without
# the two side by side. Measured: up to 7, in the white (tone-mapping keeps a little room
# for highlights above it). Without tone-mapping they were up to 90 off, washed out (in
# HLG the green 89,134,69 for 28,156,61); ffmpeg's usual zscale+tonemap=hable chain
# (npl=100) darkened them by up to 53, tonemap=mobius at its default knee (0.3) by 26.
HDR_TOLERANCE = 10


def patch_colours(picture: Path, boxes: list[tuple[int, int, int, int]]) -> list[tuple]:
    return [rgb_at(picture, *box) for box in boxes]


def assert_near(seen: list[tuple], expected: list[tuple], tolerance: int, what: str) -> None:
    assert all(abs(a - b) <= tolerance
               for got, want in zip(seen, expected, strict=True)
               for a, b in zip(got, want, strict=True)), (what, seen, expected)


def thumbnails_and_preview(src: Path, out: Path) -> dict[str, list[tuple]]:
    """The patches of src's poster, first storyboard tile and preview, as a viewer sees
    them."""
    out.mkdir()
    info = probe(src)
    make_poster(src, out / "poster.jpg", info.duration)
    make_storyboard(src, out / "storyboard.jpg", out / "storyboard.vtt", info.duration,
                    info.width, info.height)
    transcode_preview(src, out / "preview.mp4", info.duration, has_audio=False)
    return {"poster": patch_colours(out / "poster.jpg", PATCH_BOXES),
            "tile": patch_colours(out / "storyboard.jpg", TILE_PATCH_BOXES),
            "preview": patch_colours(out / "preview.mp4", PATCH_BOXES)}


@pytest.fixture(scope="module")
def sdr_patches(gen_dir: Path) -> dict[str, list[tuple]]:
    src = mediagen.make_patches_video(gen_dir / "patches-sdr.mp4")
    return thumbnails_and_preview(src, gen_dir / "patches-sdr")


@pytest.mark.parametrize("transfer", ["arib-std-b67", "smpte2084"])
def test_hdr_video_is_tone_mapped_to_sdr(tmp_path: Path, transfer: str,
                                         sdr_patches: dict[str, list[tuple]]) -> None:
    # What iPhones record (HLG), and HDR10 (PQ): 10-bit HEVC in BT.2020.
    src = mediagen.make_patches_video(tmp_path / "hdr.mp4", transfer)
    tags = streams(src)["video"]
    assert (tags["color_transfer"], tags["color_primaries"], tags["pix_fmt"]) == (
        transfer, "bt2020", "yuv420p10le")
    # Really HDR: read as it is, it looks nothing like the SDR picture.
    as_is = patch_colours(src, PATCH_BOXES)
    assert max(abs(a - b) for got, want in zip(as_is, sdr_patches["preview"], strict=True)
               for a, b in zip(got, want, strict=True)) > 30
    assert hdr_colours(src) == Hdr(transfer, "bt2020", "bt2020nc", "tv")

    seen = thumbnails_and_preview(src, tmp_path / "out")
    for what in ("poster", "tile", "preview"):
        assert_near(seen[what], sdr_patches[what], HDR_TOLERANCE, what)
    # The preview is SDR, and says so, in 8 bits.
    preview = streams(tmp_path / "out" / "preview.mp4")["video"]
    assert {key: preview.get(key) for key in (
        "pix_fmt", "color_range", "color_space", "color_transfer", "color_primaries")} == {
        "pix_fmt": "yuv420p", "color_range": "tv", "color_space": "bt709",
        "color_transfer": "bt709", "color_primaries": "bt709"}
    assert leftovers(tmp_path / "out") == []


def test_sdr_video_is_not_tone_mapped(gen_dir: Path, sdr_patches: dict[str, list[tuple]],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    src = gen_dir / "patches-sdr.mp4"  # (made by sdr_patches)
    assert hdr_colours(src) is None
    # Its colours are those of the picture (as the BT.709 test above)...
    for what in ("poster", "tile", "preview"):
        assert_near(sdr_patches[what], list(mediagen.PATCHES), 6, what)
    # ... and its ffmpeg commands those from before tone-mapping came, which benchmarks
    # compare: no filter and no option more. (The video is selected by its index, 0:0.)
    commands: list[list[str]] = []
    real_run = ffrun.run

    def recorded(stream: Any, *args: Any, **kwargs: Any) -> Any:
        commands.append(stream.compile())
        return real_run(stream, *args, **kwargs)

    # (run where the thumbnails and the preview look it up)
    monkeypatch.setattr("webapp.services.media.thumbnails.run", recorded)
    monkeypatch.setattr("webapp.services.media.preview.run", recorded)
    thumbnails_and_preview(src, gen_dir / "patches-sdr-again")
    graphs = [command[command.index("-filter_complex") + 1] for command in commands]
    assert graphs == [
        "[0:0]scale=min(iw*sar\\,1280):max(2\\,2*round(ow/dar/2))"
        ":out_color_matrix=bt601:out_range=full[s0];[s0]setsar=1[s1]",
        "[0:0]select=lt(selected_n\\,2)*gte(t-start_t+0.001\\,0.0+selected_n*2.0)[s0];"
        "[s0]scale=160:90:flags=area:out_color_matrix=bt601:out_range=full[s1];"
        "[s1]setsar=1[s2];[s2]split=2[s3][s4];[s4]tile=2x1[s5]",
        "[0:0]scale=max(2\\,2*round(oh*dar/2))"
        ":max(2\\,trunc(min(ih\\,min(480\\,1920/dar))/2)*2)[s0];"
        "[s0]setsar=1[s1]",
    ]
    preview = commands[-1]
    # (each frame at its own time, FRAME_TIMING_OPTIONS, the one addition since)
    assert preview[preview.index("[s1]"):-1] == [
        "[s1]", "-crf", "28", "-enc_time_base:v", "1:90000", "-fps_mode", "vfr",
        "-movflags", "+faststart", "-pix_fmt", "yuv420p", "-preset", "veryfast",
        "-threads", "0", "-vcodec", "libx264"]


def test_poster_with_unknown_duration(clip: Path, tmp_path: Path) -> None:
    dst = tmp_path / "poster.jpg"
    make_poster(clip, dst, None)
    assert streams(dst)["video"]["codec_name"] == "mjpeg"


def test_poster_when_picture_ends_before_the_seek_point(tmp_path: Path) -> None:
    src = mediagen.make_video(tmp_path / "src.mp4", duration=0.4, audio_duration=6.0)
    dst = tmp_path / "poster.jpg"
    make_poster(src, dst, probe(src).duration)  # wants 0.6 s in: no frame there
    assert streams(dst)["video"]["width"] == 320
    assert leftovers(tmp_path) == []


# --- storyboard ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("duration", "size", "expected"),
    [
        # interval, columns, rows, tile_width, tile_height, count
        (6.0, (320, 240), (2.0, 3, 1, 160, 120, 3)),
        (4.0, (1280, 720), (2.0, 2, 1, 160, 90, 2)),
        (0.5, (1280, 720), (2.0, 1, 1, 160, 90, 1)),
        (4.001, (320, 240), (2.0, 2, 1, 160, 120, 2)),
        (4.01, (320, 240), (2.0, 3, 1, 160, 120, 3)),
        (5.0, (321, 241), (2.0, 3, 1, 160, 120, 3)),
        (21.0, (1920, 1080), (2.0, 10, 2, 160, 90, 11)),
        (200.0, (1080, 1920), (2.0, 10, 10, 160, 284, 100)),
        (250.0, (640, 480), (2.5, 10, 10, 160, 120, 100)),
        (3600.0, (853, 480), (36.0, 10, 10, 160, 90, 100)),
    ],
)
def test_plan_storyboard(duration: float, size: tuple[int, int], expected: tuple) -> None:
    plan = plan_storyboard(duration, *size)
    assert (
        plan.interval, plan.columns, plan.rows, plan.tile_width, plan.tile_height, plan.count
    ) == expected
    assert plan.tile_height % 2 == 0
    assert plan.columns * plan.rows >= plan.count


def _vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def check_storyboard(board: Storyboard, sprite: Path, vtt: Path, duration: float) -> None:
    picture = streams(sprite)["video"]
    assert picture["codec_name"] == "mjpeg"
    assert (picture["width"], picture["height"]) == (
        board.columns * board.tile_width, board.rows * board.tile_height
    )
    cues = webvtt.read(str(vtt)).captions
    assert len(cues) == board.count
    assert _vtt_seconds(cues[0].start) == 0.0
    assert _vtt_seconds(cues[-1].end) == pytest.approx(duration, abs=0.001)
    for before, after in zip(cues, cues[1:], strict=False):
        assert before.end == after.start  # contiguous: every moment has a thumbnail
    for cue in cues:
        assert _vtt_seconds(cue.start) < _vtt_seconds(cue.end)
        match = re.fullmatch(r"storyboard\.jpg#xywh=(\d+),(\d+),(\d+),(\d+)", cue.text)
        assert match, cue.text
        x, y, w, h = map(int, match.groups())
        assert (w, h) == (board.tile_width, board.tile_height)
        assert x + w <= picture["width"] and y + h <= picture["height"]


def test_storyboard(hd_clip: Path, tmp_path: Path) -> None:
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    progress = Recorder()
    info = probe(hd_clip)
    assert info.duration and info.width and info.height
    board = make_storyboard(
        hd_clip, sprite, vtt, info.duration, info.width, info.height, progress
    )
    # One keyframe in the clip: its frames are decoded, non-reference ones skipped.
    assert board == dataclasses.replace(plan_storyboard(info.duration, 1280, 720),
                                        references_only=True)
    assert (board.count, board.tile_width, board.tile_height) == (3, 160, 90)
    check_storyboard(board, sprite, vtt, info.duration)
    progress.assert_well_formed()
    assert leftovers(tmp_path) == []


def test_storyboard_when_audio_outlasts_picture(tmp_path: Path) -> None:
    # The container says 4.3 s, so the plan wants a tile at 4 s, but the picture stops at 4 s.
    src = mediagen.make_video(tmp_path / "src.mp4", duration=4.0, audio_duration=4.3)
    info = probe(src)
    assert info.duration == pytest.approx(4.3, abs=0.05)
    assert plan_storyboard(info.duration, 320, 240).count == 3
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 320, 240)
    assert board.count == 2
    check_storyboard(board, sprite, vtt, info.duration)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".webm", ".ts"])
def test_a_file_whose_timestamps_start_late_lasts_as_long_as_its_data(tmp_path: Path,
                                                                      suffix: str) -> None:
    # A clip cut from a recording or a stream with its timestamps kept: MP4 and Matroska
    # state its end (5 s), not its length (3 s); MPEG-TS its length already.
    src = mediagen.make_late_start(tmp_path / f"src{suffix}", start=2.0, duration=3.0)
    info = probe(src)
    assert info.duration == pytest.approx(3.0, abs=0.05)
    assert integrity.find_cut(src, info.format_name, info.duration) is None  # not "cut"
    extract_audio(src, tmp_path / "audio.wav", info.duration, format_name=info.format_name)
    preview = tmp_path / "preview.mp4"
    transcode_preview(src, preview, info.duration, format_name=info.format_name)
    assert float(ffmpeg.probe(str(preview))["format"]["duration"]) == pytest.approx(
        info.duration, abs=0.1)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 160, 120,
                            format_name=info.format_name)
    assert board.count == 2
    check_storyboard(board, sprite, vtt, info.duration)


@pytest.mark.parametrize(("gop", "expected"), [(25, 1.0), (50, 2.0), (75, 3.0), (None, 6.0)])
def test_keyframe_gap(tmp_path: Path, gop: int | None, expected: float) -> None:
    src = mediagen.make_video(tmp_path / "src.mp4", duration=6.0, rate=25, gop=gop)
    assert keyframe_gap(src, 6.0) == pytest.approx(expected, abs=0.05)


def test_keyframe_gap_of_what_is_not_video(tmp_path: Path) -> None:
    assert keyframe_gap(tmp_path / "missing.mp4", 6.0) is None
    wav = mediagen.make_speech_wav(tmp_path / "a.wav", "no pictures here")
    assert keyframe_gap(wav, 1.0) is None


def test_storyboard_from_keyframes_alone_when_they_are_close(tmp_path: Path) -> None:
    """One keyframe a second, tiles every 2 s: only keyframes are decoded, and the tiles
    are the very frames a decode of every frame picks (the sprites are byte-identical)."""
    src = mediagen.make_video(tmp_path / "src.mp4", duration=6.0, rate=25, gop=25)
    info = probe(src)
    boards = {}
    for name, gap in (("keyframes", None), ("every frame", 10.0)):
        out = tmp_path / name
        out.mkdir()
        with pytest.MonkeyPatch.context() as patch:
            if gap is not None:  # as if keyframes were rare: the full decode
                patch.setattr("webapp.services.media.thumbnails.keyframe_gap",
                              lambda *_, gap=gap, **__: gap)
            board = make_storyboard(src, out / "storyboard.jpg", out / "storyboard.vtt",
                                    info.duration, 320, 240)
        check_storyboard(board, out / "storyboard.jpg", out / "storyboard.vtt", info.duration)
        boards[name] = board
    assert boards["keyframes"].keyframes_only and not boards["every frame"].keyframes_only
    assert boards["keyframes"].count == boards["every frame"].count == 3
    assert ((tmp_path / "keyframes" / "storyboard.jpg").read_bytes()
            == (tmp_path / "every frame" / "storyboard.jpg").read_bytes())


def test_storyboard_of_a_decoder_that_cannot_skip_to_keyframes(tmp_path: Path) -> None:
    # Theora (Ogg) keyframes are close (every 12 frames here), but its decoder fails on
    # the frames `-skip_frame nokey` tells it to skip: the frames are all decoded instead.
    src = mediagen.make_media(tmp_path / "src.ogv", duration=5.0)
    info = probe(src)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 160, 120,
                            format_name=info.format_name)
    assert not board.keyframes_only and board.count == 3
    check_storyboard(board, sprite, vtt, info.duration)


def test_storyboard_decodes_every_frame_when_keyframes_are_rare(tmp_path: Path) -> None:
    src = mediagen.make_video(tmp_path / "src.mp4", duration=6.0, rate=25, gop=75)  # 3 s
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, 6.0, 320, 240)
    assert not board.keyframes_only and board.count == 3
    assert board.references_only  # every frame is one here (x264's ultrafast: no B-frames)
    check_storyboard(board, sprite, vtt, 6.0)


def non_reference_frames(path: Path) -> int:
    """Frames a decode skips with `-skip_frame noref` (all of them minus what is left)."""
    def count(*options: str) -> int:
        done = subprocess.run(["ffprobe", "-v", "error", *options, "-select_streams", "v:0",
                               "-count_frames", "-show_entries", "stream=nb_read_frames",
                               "-of", "csv=p=0", str(path)],
                              capture_output=True, text=True, check=True)
        return int(done.stdout.strip())
    return count() - count("-skip_frame", "noref")


def seen(luma: float) -> float:
    """A video's luma (16-235) as tile_brightness reads it from the JPEG (0-255)."""
    return (luma - 16) * 255 / 219


def test_storyboard_of_rare_keyframes_skips_non_reference_frames(tmp_path: Path) -> None:
    """Keyframes 4 s apart, tiles every 2 s: the B-frames, which no frame refers to, are not
    decoded, and every tile still shows the start of its own interval."""
    src = mediagen.make_ramp_video(tmp_path / "ramp.mp4", duration=8.0, rate=25,
                                   per_second=20, x264_params="bframes=3", gop=100)
    assert non_reference_frames(src) > 50  # of 200: what the storyboard saves
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, 8.0, 320, 240)
    assert not board.keyframes_only and board.references_only
    assert board.count == 4
    check_storyboard(board, sprite, vtt, 8.0)
    for i in range(board.count):  # luma 64 + 20 t: tile i from 2i s, a few frames on at most
        assert seen(64 + 40 * i) - 3 <= tile_brightness(sprite, board, i) <= seen(
            64 + 20 * (2 * i + 0.16)) + 3, i


def test_storyboard_decodes_in_full_when_reference_frames_are_rare(tmp_path: Path) -> None:
    """5 frames a second and 16 B-frames in a row: reference frames 3.4 s apart cannot fill
    tiles every 2 s, so the storyboard is decoded again, every frame."""
    src = mediagen.make_ramp_video(tmp_path / "sparse.mp4", duration=12.0, rate=5,
                                   per_second=14,
                                   x264_params="bframes=16:b-adapt=0:b-pyramid=none",
                                   gop=100)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, 12.0, 320, 240)
    assert not board.keyframes_only and not board.references_only
    assert board.count == 6
    check_storyboard(board, sprite, vtt, 12.0)
    for i in range(board.count):  # luma 64 + 14 t: tile i shows 2i s
        assert abs(tile_brightness(sprite, board, i) - seen(64 + 28 * i)) <= 3, i


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_storyboard_of_an_open_gop_video(tmp_path: Path, suffix: str) -> None:
    """x264 with open GOPs (keyframes that are I-frames but not IDR, as many encoders and
    broadcasts make), a keyframe every 2 s: decoded alone, those keyframes came out out of
    order (4 s, 2 s, 0 s, then none), and this clean video failed as "the video ends before
    2.0 s of 10.0 s". The reference frames are decoded instead, and each tile shows its own
    interval."""
    ramp = mediagen.make_ramp_video(tmp_path / "ramp.mp4", duration=10.0, rate=25,
                                    per_second=16, x264_params="open-gop=1", gop=50)
    src = tmp_path / f"open-gop{suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(ramp), "-c", "copy",
                    str(src)], check=True)
    info = probe(src)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 320, 240,
                            format_name=info.format_name)
    assert not board.keyframes_only and board.references_only and board.damaged == 0
    assert board.count == 5
    check_storyboard(board, sprite, vtt, info.duration)
    for i in range(board.count):  # luma 64 + 16 t: tile i from 2i s, a few frames on at most
        assert seen(64 + 32 * i) - 3 <= tile_brightness(sprite, board, i) <= seen(
            64 + 16 * (2 * i + 0.16)) + 3, i


def tile_brightness(sprite: Path, board: Storyboard, index: int) -> int:
    """The mean luma (0-255) of one tile of a sprite, as ffmpeg reads the JPEG."""
    x = (index % board.columns) * board.tile_width
    y = (index // board.columns) * board.tile_height
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(sprite), "-vf",
         f"crop={board.tile_width}:{board.tile_height}:{x}:{y},scale=1:1:flags=area",
         "-f", "rawvideo", "-pix_fmt", "gray", "-"], capture_output=True, check=True)
    return done.stdout[0]


@pytest.mark.parametrize("gop", [25, None])  # keyframes alone, or every frame decoded
def test_storyboard_starts_after_a_black_opening(tmp_path: Path, gop: int | None) -> None:
    src = mediagen.make_black_opening(tmp_path / "fade.mp4", black=3.0, picture=5.0, gop=gop)
    info = probe(src)
    assert info.duration == pytest.approx(8.0, abs=0.05)
    assert black_opening(src, keyframes_only=gop is not None) == pytest.approx(3.0,
                                                                                    abs=0.05)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 320, 240)
    assert board.keyframes_only == (gop is not None)
    assert board.start == pytest.approx(3.0, abs=0.05)
    assert board.count == 3  # the 5 s after the opening, a tile per 2 s
    check_storyboard(board, sprite, vtt, info.duration)  # every moment still has a tile
    cues = webvtt.read(str(vtt)).captions
    assert [_vtt_seconds(c.start) for c in cues] == pytest.approx([0.0, 5.0, 7.0], abs=0.05)
    brightness = [tile_brightness(sprite, board, i) for i in range(board.count)]
    assert min(brightness) > 40, f"a storyboard tile is black: mean luma {brightness}"
    # The same video without its opening: no tile is black either, and none is moved.
    plain = mediagen.make_video(tmp_path / "plain.mp4", duration=4.0, audio=False, gop=gop)
    assert black_opening(plain, keyframes_only=gop is not None) == 0.0


def test_storyboard_of_an_open_gop_video_starts_after_its_black_opening(tmp_path: Path) -> None:
    """The black opening was looked for among an open GOP's keyframes, which come out of
    order (test_storyboard_of_an_open_gop_video): a later keyframe came first, 0.0 s was
    taken for the opening's end, and the storyboard, redone from the reference frames,
    started with a black tile. It is looked for again with the frames the storyboard
    decodes."""
    src = mediagen.make_black_opening(tmp_path / "fade.mp4", black=3.0, picture=5.0, gop=25,
                                      x264_params="open-gop=1:bframes=2")
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, 8.0, 320, 240)
    assert not board.keyframes_only and board.references_only
    assert board.start == pytest.approx(3.0, abs=0.05)
    brightness = [tile_brightness(sprite, board, i) for i in range(board.count)]
    assert min(brightness) > 40, f"a storyboard tile is black: mean luma {brightness}"


def late_picture(folder: Path, suffix: str) -> Path:
    """An 8 s luma ramp (a keyframe a second) that starts 2 s after a 10 s tone."""
    ramp = mediagen.make_ramp_video(folder / "ramp.mp4", duration=8.0, rate=25,
                                    per_second=20, x264_params="bframes=0", gop=25)
    src = folder / f"late{suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-itsoffset", "2",
                    "-i", str(ramp), "-f", "lavfi", "-i", "sine=duration=10",
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(src)],
                   check=True)
    return src


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_storyboard_of_a_picture_that_starts_after_the_sound(tmp_path: Path,
                                                             suffix: str) -> None:
    """An edited export or an MPEG-TS capture whose picture starts 2 s after its sound: the
    storyboard is made (it was refused as "cut short"), and each tile shows the frame the
    preview shows at its cue's start (the file's time, not the picture's own)."""
    src = late_picture(tmp_path, suffix)
    found = streams(src)  # (MPEG-TS starts its clock at 1.4 s)
    lag = float(found["video"]["start_time"]) - float(found["audio"]["start_time"])
    assert lag == pytest.approx(2.0, abs=0.03)
    info = probe(src)
    assert info.duration == pytest.approx(10.0, abs=0.05)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, info.duration, 320, 240)
    check_storyboard(board, sprite, vtt, info.duration)
    cues = webvtt.read(str(vtt)).captions
    # Nothing to show before 2 s: the first tile (the first frame) covers it too.
    assert [_vtt_seconds(c.start) for c in cues] == pytest.approx(
        [0.0, lag + 2, lag + 4, lag + 6], abs=0.002)
    for i, cue in enumerate(cues):  # luma 64 + 20 x the picture's own time (file's - lag)
        shown = max(_vtt_seconds(cue.start), lag) - lag
        assert abs(tile_brightness(sprite, board, i) - seen(64 + 20 * shown)) <= 4, i


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_subtitles_that_outlast_the_sound_and_picture_do_not_lengthen_the_video(
        tmp_path: Path, suffix: str) -> None:
    """A subtitle cue ending 2 s after the picture and sound: the file is stated to last
    3 s (its subtitles'), and the storyboard and the preview failed as "the video ends
    before 1.0 s of 3.0 s (the file is cut short or damaged)". It lasts its 1 s of sound
    and picture, and both are made."""
    src = mediagen.make_with_subtitles(tmp_path / f"subtitled{suffix}", 1.0, cue_end=3.0)
    assert float(ffmpeg.probe(str(src))["format"]["duration"]) == pytest.approx(3.0, abs=0.05)
    info = probe(src)
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert (info.has_video, info.has_audio) == (True, True)
    board = make_storyboard(src, tmp_path / "s.jpg", tmp_path / "s.vtt", info.duration,
                            160, 120, format_name=info.format_name)
    check_storyboard(board, tmp_path / "s.jpg", tmp_path / "s.vtt", info.duration)
    dst = tmp_path / "preview.mp4"
    transcode_preview(src, dst, info.duration, format_name=info.format_name)
    assert float(streams(dst)["video"]["duration"]) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_storyboard_reads_the_stream_facts_with_one_ffprobe(tmp_path: Path, suffix: str,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """The keyframe scan takes the picture's start from the step's one ffprobe
    (first_streams) rather than starting another (a process start on the step's path),
    and finds the same gap as when it reads the start itself. The picture ends with the
    file: its last keyframe is 1 s from the end, not 3 s (the 2 s of sound before it
    counted twice sent it to the full decode), so its tiles come from keyframes alone."""
    src = late_picture(tmp_path, suffix)  # (the picture starts at 2 s, at 3.4 s in MPEG-TS)
    duration = probe(src).duration
    found = first_streams(src)
    assert found.video_start == float(streams(src)["video"]["start_time"]) >= 2.0
    length = duration - found.offset(found.video)  # the picture's own: 8 s
    gap = keyframe_gap(src, length, stream=found.video_spec)
    assert gap == pytest.approx(1.0, abs=0.05)
    assert keyframe_gap(src, length, stream=found.video_spec, start=found.video_start) == gap
    ffprobes: list[tuple[str, ...]] = []
    real_ffprobe = mediainput.ffprobe

    def counted(path: Path, *args: str, **kwargs: Any) -> dict[str, Any]:
        ffprobes.append(args)
        return real_ffprobe(path, *args, **kwargs)

    monkeypatch.setattr(mediainput, "ffprobe", counted)
    board = make_storyboard(src, tmp_path / "s.jpg", tmp_path / "s.vtt", duration, 320, 240)
    assert board.interval * 1.01 >= gap and board.keyframes_only
    assert len(ffprobes) == 1, ffprobes


def test_a_video_black_throughout_keeps_its_tiles_where_they_are(tmp_path: Path) -> None:
    src = mediagen.make_black_opening(tmp_path / "dark.mp4", black=6.0, picture=0.2)
    assert black_opening(src, limit=3.0) == 0.0  # black for all it looked at
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    board = make_storyboard(src, sprite, vtt, probe(src).duration, 320, 240)
    assert board.start == 0.0
    check_storyboard(board, sprite, vtt, probe(src).duration)


def test_storyboard_needs_duration_and_size(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="^The storyboard could not be made: the video's"
                                         " duration and size are unknown.$"):
        make_storyboard(clip, tmp_path / "s.jpg", tmp_path / "s.vtt", 0.0, 0, 0)


# --- truncated uploads -----------------------------------------------------------------


def test_truncated_plain_mp4_is_not_media(clip: Path, tmp_path: Path) -> None:
    # A plain MP4 keeps its index (moov) at the end, so the first half is unreadable.
    cut = mediagen.make_truncated(clip, tmp_path / "cut.mp4")
    with pytest.raises(MediaError, match="not a playable audio or video file") as caught:
        probe(cut)
    assert "moov atom not found" in caught.value.detail


def test_truncated_faststart_mp4_probes_at_full_length(truncated_faststart: Path) -> None:
    # The index survives and still claims the whole duration: only decoding can tell.
    assert probe(truncated_faststart).duration == pytest.approx(6.0, abs=0.1)


def test_truncated_audio_extract_fails(truncated_faststart: Path, tmp_path: Path) -> None:
    dst = tmp_path / "audio.wav"
    with pytest.raises(MediaError, match=r"^The audio could not be extracted: the input ends at"
                                         r" \d+\.\d s of 6\.0 s \(the file is cut short or"
                                         r" damaged\)\.$"):
        extract_audio(truncated_faststart, dst, 6.0)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transcode_fails(truncated_faststart: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError) as caught:
        transcode_preview(truncated_faststart, tmp_path / "preview.mp4", 6.0)
    # ffmpeg decodes up to where the data stops (damage is decoded through since the
    # preview's output is checked for length, as the audio's): the sentence says where.
    assert re.fullmatch(r"The preview could not be encoded: the input ends at \d+\.\d s of"
                        r" 6\.0 s \(the file is cut short or damaged\)\.",
                        str(caught.value)), str(caught.value)
    assert re.search(r"partial file|corrupt|Invalid NAL", caught.value.detail)
    assert list(tmp_path.iterdir()) == []


def test_a_preview_whose_end_finds_the_disk_full_says_so(clip: Path, tmp_path: Path) -> None:
    """The disk fills while ffmpeg writes the preview's end (+faststart copies the file to
    put its index first): ffmpeg says "Error writing trailer … No space left on device" and
    still exits 0. The step completed with a broken file, or failed as "the input ends at
    0.0 s" (the output's length), where the disk is full is what to say."""
    whole = tmp_path / "whole.mp4"
    duration = probe(clip).duration
    transcode_preview(clip, whole, duration)
    with small_disk(tmp_path / "small", whole.stat().st_size * 4 // 5) as disk:
        with pytest.raises(MediaError) as caught:
            transcode_preview(clip, disk / "preview.mp4", duration)
        assert str(caught.value) == ("The preview could not be encoded: the server's disk is "
                                     "full."), caught.value.detail
        assert list(disk.iterdir()) == []


def test_truncated_storyboard_fails(truncated_faststart: Path, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="^The storyboard could not be made: ") as caught:
        make_storyboard(
            truncated_faststart, tmp_path / "s.jpg", tmp_path / "s.vtt", 6.0, 320, 240
        )
    assert str(caught.value).endswith(".") and "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


# --- cut files found at upload (webapp.services.integrity) ------------------------------

WHOLE = {
    # name: how to make it (12 s unless said otherwise)
    "front.mp4": lambda d: mediagen.make_video(d / "front.mp4", 12.0, "160x120", faststart=True),
    "plain.mp4": lambda d: mediagen.make_video(d / "plain.mp4", 12.0, "160x120"),
    "clip.mov": lambda d: mediagen.make_media(d / "clip.mov"),
    "clip.mkv": lambda d: mediagen.make_media(d / "clip.mkv"),
    "clip.webm": lambda d: mediagen.make_media(d / "clip.webm"),
    "tone.wav": lambda d: mediagen.make_media(d / "tone.wav"),
    "tone.mp3": lambda d: mediagen.make_media(d / "tone.mp3"),
    "tone.flac": lambda d: mediagen.make_media(d / "tone.flac"),
    # Audio much shorter than the picture, and the other way round: whole all the same.
    "short-audio.mp4": lambda d: mediagen.make_video(d / "short-audio.mp4", 12.0, "160x120",
                                                     faststart=True, audio_duration=2.0),
    "short-audio.mkv": lambda d: mediagen.make_media(d / "short-audio.mkv", audio_duration=2.0),
    "short-picture.mp4": lambda d: mediagen.make_video(d / "short-picture.mp4", 2.0, "160x120",
                                                       faststart=True, audio_duration=12.0),
}
# Those whose stated length survives a cut (a plain MP4 loses its index instead).
CUTTABLE = ["front.mp4", "clip.mkv", "clip.webm", "tone.wav", "tone.mp3", "tone.flac",
            "short-audio.mp4", "short-audio.mkv"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("whole")
    return {name: make(folder) for name, make in WHOLE.items()}


def find_cut(path: Path) -> integrity.Cut | None:
    info = probe(path)
    return integrity.find_cut(path, info.format_name, info.duration)


@pytest.mark.parametrize("name", list(WHOLE))
def test_whole_files_are_not_cut(whole: dict[str, Path], name: str) -> None:
    assert find_cut(whole[name]) is None
    assert not integrity.starts_like_mp4(whole[name]) or name.endswith((".mp4", ".mov"))


@pytest.mark.parametrize("name", CUTTABLE)
def test_cut_files_say_where_their_data_ends(whole: dict[str, Path], name: str,
                                             tmp_path: Path) -> None:
    cut_file = mediagen.make_truncated(whole[name], tmp_path / name, 0.5)
    cut = find_cut(cut_file)
    assert cut is not None
    assert cut.duration == pytest.approx(12.0, abs=0.1)
    # Half the bytes of these steady test streams hold about half the time.
    assert 3.0 < cut.ends_at < 9.0, cut
    assert re.fullmatch(r"the file ends at \d+\.\d s of 12\.0 s", str(cut)), str(cut)


def test_mp4_cut_in_its_last_second_is_found(whole: dict[str, Path], tmp_path: Path) -> None:
    """The MP4 index gives every sample's bytes: a cut is exact, not a matter of seconds."""
    cut_file = mediagen.make_truncated(whole["front.mp4"], tmp_path / "c.mp4", 0.995)
    cut = find_cut(cut_file)
    assert cut is not None and 11.0 < cut.ends_at < 12.0, cut


def test_mp4_stating_more_than_its_tracks_hold_is_not_called_cut(whole: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """Every byte its index points at is there: odd, but whole (its movie header says 18 s
    where the tracks hold 12 s)."""
    data = bytearray(whole["front.mp4"].read_bytes())
    at = data.index(b"mvhd") + 4 + 4 + 8  # version and flags, creation and modification
    timescale, length = struct.unpack(">II", data[at:at + 8])
    data[at + 4:at + 8] = struct.pack(">I", length * 3 // 2)
    longer = tmp_path / "longer.mp4"
    longer.write_bytes(data)
    assert probe(longer).duration == pytest.approx(18.0, abs=0.1)
    assert find_cut(longer) is None
    # The same file cut is still found: the index shows the missing bytes.
    assert find_cut(mediagen.make_truncated(longer, tmp_path / "cut.mp4", 0.5)) is not None


def test_plain_mp4_without_its_index_starts_like_an_mp4(whole: dict[str, Path],
                                                        tmp_path: Path) -> None:
    cut_file = mediagen.make_truncated(whole["plain.mp4"], tmp_path / "c.mp4", 0.5)
    with pytest.raises(MediaError):
        probe(cut_file)
    assert integrity.starts_like_mp4(cut_file)
    for other in (whole["clip.mkv"], whole["tone.wav"]):
        assert not integrity.starts_like_mp4(other)
    zeros = tmp_path / "zeros.mov"
    zeros.write_bytes(bytes(4096))
    assert not integrity.starts_like_mp4(zeros)


def test_streamed_wav_without_a_data_size_is_not_called_cut(whole: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """Recorders that write to a pipe leave the data size at 0 or all ones."""
    data = bytearray(whole["tone.wav"].read_bytes())
    at = data.index(b"data") + 4
    for placeholder in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"):
        data[at:at + 4] = placeholder
        streamed = tmp_path / "streamed.wav"
        streamed.write_bytes(data[: len(data) // 2])
        assert find_cut(streamed) is None


# --- what a failure says ----------------------------------------------------------------


def test_errors_carry_a_sentence_and_the_raw_detail_apart() -> None:
    assert MediaError("msg").detail is None and str(MediaError("msg")) == "msg"
    error = MediaError("The poster could not be made: x.", detail="[h264] raw words")
    assert (str(error), error.detail) == ("The poster could not be made: x.", "[h264] raw words")
    # Both survive pickling (exceptions cross process boundaries, e.g. from a child process).
    for original in (error, TranscriptionError("Whisper failed.", detail="raw")):
        copy = pickle.loads(pickle.dumps(original))
        assert (type(copy), str(copy), copy.detail) == (
            type(original), str(original), original.detail)


def test_extract_audio_of_a_track_shorter_than_the_video(whole: dict[str, Path],
                                                         tmp_path: Path) -> None:
    """A 2 s tone in a 12 s video is whole: measured against its own length, not the video's."""
    for name in ("short-audio.mp4", "short-audio.mkv"):
        src = whole[name]
        dst = tmp_path / f"{name}.wav"
        extract_audio(src, dst, probe(src).duration)
        assert float(streams(dst)["audio"]["duration"]) == pytest.approx(2.0, abs=0.1)


def sound_starts(wav: Path) -> float:
    """When a WAV's first sound begins: the end of its opening silence (0.0 without one)."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(wav), "-af",
                           "silencedetect=duration=0.3", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    match = re.search(r"silence_start: 0\b.*?silence_end: ([\d.]+)", done.stderr, re.S)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("suffix, codec", [(".mp4", "aac"), (".mkv", "libopus"), (".ts", "aac")])
def test_extract_audio_of_sound_that_starts_after_the_picture(tmp_path: Path, suffix: str,
                                                              codec: str) -> None:
    """A 4 s tone from 2 s to 6 s of a 6 s video: the WAV is on the file's time (silence,
    then the tone), and whole (Matroska's DURATION tag already counts the offset; ffmpeg
    drops the offset of MPEG-TS by itself)."""
    src = tmp_path / f"late{suffix}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=160x120:rate=25:duration=6", "-itsoffset", "2", "-f",
                    "lavfi", "-i", "sine=duration=4:sample_rate=48000", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", codec, str(src)],
                   check=True)
    found = streams(src)  # (MPEG-TS starts its clock at 1.4 s)
    assert float(found["audio"]["start_time"]) - float(found["video"]["start_time"]) == (
        pytest.approx(2.0, abs=0.05))
    info = probe(src)
    dst = tmp_path / "audio.wav"
    extract_audio(src, dst, info.duration, format_name=info.format_name)
    assert float(streams(dst)["audio"]["duration"]) == pytest.approx(6.0, abs=0.1)
    assert sound_starts(dst) == pytest.approx(2.0, abs=0.1)


def test_damaged_data_is_one_sentence_and_the_raw_output_a_detail(
        whole: dict[str, Path], tmp_path: Path) -> None:
    """Every byte is there (so the upload is accepted), but most are garbage: more frames
    are lost than ffrun.MAX_DAMAGED_SHARE. (Damage in places is decoded through: see
    test_damage_in_places_is_decoded_through_with_a_note.)"""
    src = tmp_path / "damaged.mp4"
    size = whole["front.mp4"].stat().st_size
    mediagen.make_damaged(whole["front.mp4"], src, garbage=int(size * 0.7), at=0.15)
    assert find_cut(src) is None
    with pytest.raises(MediaError) as caught:
        transcode_preview(src, tmp_path / "preview.mp4", 12.0)
    message = str(caught.value)
    assert re.fullmatch(r"The preview could not be encoded: the (video|audio|media) data is"
                        r" damaged \(\d+ frames could not be decoded\)\.", message), message
    detail = caught.value.detail
    assert detail and detail not in message and "\n" not in message
    assert str(tmp_path) not in detail and len(detail) <= ffrun.MAX_DETAIL
    assert [p.name for p in tmp_path.iterdir()] == ["damaged.mp4"]


NOTE = re.compile(r"The source is damaged in places: (1 damaged frame was|\d+ damaged frames"
                  r" were) skipped or concealed, as players do\.")


def _length(path: Path) -> float:
    return probe(path).duration


def test_damage_in_places_is_decoded_through_with_a_note(tmp_path: Path) -> None:
    """4 KB of garbage in the middle of a phone's MP4 (a flaky network, a bad sector): as
    in players, the damaged frames are skipped or concealed and every output goes to the
    end, each step saying so in its note. (Before, -xerror failed every step.)"""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=3.0)
    src = mediagen.make_damaged(clip, tmp_path / "damaged.mp4", garbage=4096)
    assert find_cut(src) is None  # accepted at upload
    notes = {
        "audio": extract_audio(src, tmp_path / "audio.wav", 3.0),
        "preview": transcode_preview(src, tmp_path / "preview.mp4", 3.0),
        "storyboard": make_storyboard(src, tmp_path / "s.jpg", tmp_path / "s.vtt", 3.0, 320,
                                      240).damaged,
    }
    # The skipped sound is silence, not left out: the captions after it keep their time.
    assert _length(tmp_path / "audio.wav") == pytest.approx(3.0, abs=0.03)
    assert _length(tmp_path / "preview.mp4") == pytest.approx(3.0, abs=0.15)
    assert len(webvtt.read(tmp_path / "s.vtt").captions) == 2
    assert NOTE.fullmatch(notes["audio"] or ""), notes  # the garbage hits the sound
    assert notes["preview"] is None or NOTE.fullmatch(notes["preview"]), notes
    make_poster(src, tmp_path / "poster.jpg", 3.0)
    assert (tmp_path / "poster.jpg").stat().st_size > 0


def test_frames_concealed_without_an_error_line_are_counted(tmp_path: Path) -> None:
    """Noise inside one keyframe, its framing intact: h264 decodes it and hides the damage
    from its neighbours, printing no error (only "concealing 192 DC, 192 AC, 192 MV
    errors", at ffmpeg's info level, and the warning "corrupt decoded frame"). The preview
    and the storyboard, which decode it, say so; the clean clip says nothing. (Before, the
    damage went unnoted: only error lines were read.)"""
    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=3.0, size="640x360",
                               audio=False, gop=25)
    src = mediagen.make_concealed(clip, tmp_path / "damaged.mp4", at=2.0)

    def notes(path: Path) -> tuple[str | None, str | None]:
        preview = transcode_preview(path, tmp_path / "preview.mp4", 3.0, has_audio=False)
        board = make_storyboard(path, tmp_path / "s.jpg", tmp_path / "s.vtt", 3.0, 640, 360)
        return preview, ffrun.damage_note(board.damaged)

    assert notes(clip) == (None, None)
    assert notes(src) == (NOTE_ONE, NOTE_ONE)
    assert _length(tmp_path / "preview.mp4") == pytest.approx(3.0, abs=0.15)


NOTE_ONE = ("The source is damaged in places: 1 damaged frame was skipped or concealed, as"
            " players do.")


@pytest.mark.parametrize(("lines", "damaged"), [
    # What ffmpeg 5.1 printed (-loglevel level+warning) on MP4 and MPEG-TS files with bytes
    # overwritten or cut out.
    (["[error] Error while decoding stream #0:1: Invalid data found when processing input",
      "    Last message repeated 2 times"], 3),
    (["[warning] /m/videos/x/source.mp4: corrupt decoded frame in stream 0"], 1),
    (["[h264 @ 0x55] [error] Missing reference picture, default is 65780",
      "[h264 @ 0x55] [error] reference picture missing during reorder",
      "[h264 @ 0x55] [error] co located POCs unavailable",
      "[h264 @ 0x55] [error] mmco: unref short failure"], 3),
    # A join of MPEG-TS segments: packets marked corrupt, no frame lost.
    (["[mpegts @ 0x55] [warning] Packet corrupt (stream = 1, dts = 549069).",
      "[warning] joined.ts: corrupt input packet in stream 1",
      "    Last message repeated 4 times"], 0),
])
def test_damaged_frames_are_counted_from_ffmpegs_words(lines: list[str], damaged: int) -> None:
    tail: deque[str] = deque(maxlen=20)
    count = [0]
    ffrun._drain(io.BytesIO("".join(f"{line}\n" for line in lines).encode()), tail, count)
    assert count[0] == damaged
    # Only errors are kept for a failure's reason and detail, without their level tag.
    assert list(tail) == [line.replace("[error] ", "") for line in lines if "[error] " in line]


@pytest.mark.parametrize(("damaged", "words"), [
    (410, "410 frames could not be decoded"),
    (1, "1 frame could not be decoded"),
    # ffmpeg gave up (exit 69) on damage that wrote no error line we count: no "0 frames".
    (0, "more than 20 % of its frames could not be decoded"),
])
def test_a_source_given_up_on_says_how_much_could_not_be_decoded(damaged: int,
                                                                 words: str) -> None:
    assert ffrun.too_many_errors(damaged) == words


def test_joined_mpeg_ts_segments_give_every_output(tmp_path: Path) -> None:
    """Segments muxed one by one and joined (continuity counters restart at each join,
    which ffmpeg calls corrupt packets, though no byte is lost) play through: no step
    fails, and none calls them damaged. (Before, the preview and storyboard failed.)"""
    src = mediagen.make_joined_ts(tmp_path / "joined.ts", segments=3, seconds=1.0)
    info = probe(src)
    assert info.duration == pytest.approx(3.0, abs=0.1)
    kw = {"format_name": info.format_name}
    assert extract_audio(src, tmp_path / "audio.wav", info.duration, **kw) is None
    assert transcode_preview(src, tmp_path / "preview.mp4", info.duration, **kw) is None
    board = make_storyboard(src, tmp_path / "s.jpg", tmp_path / "s.vtt", info.duration, 160,
                            120, **kw)
    assert board.count == 2 and board.damaged == 0
    assert _length(tmp_path / "audio.wav") == pytest.approx(3.0, abs=0.15)
    assert _length(tmp_path / "preview.mp4") == pytest.approx(3.0, abs=0.15)


def test_damaged_sound_in_mpeg_ts_does_not_stop_the_preview(tmp_path: Path) -> None:
    """1 KB of noise in an MPEG-TS whose AAC the preview copies: the copy's ADTS-to-MP4
    bitstream filter refused the damaged frame's header and failed the preview ("the media
    data is damaged after 2.6 s"), where the audio step decodes through. The sound is then
    encoded, and the preview goes to the end with the note."""
    clean = mediagen.make_joined_ts(tmp_path / "clean.ts", segments=1, seconds=4.0)
    src = mediagen.make_damaged(clean, tmp_path / "damaged.ts", garbage=1024, at=0.6)
    info = probe(src)
    assert audio_copyable(src, info.format_name)
    note = transcode_preview(src, tmp_path / "preview.mp4", info.duration,
                             format_name=info.format_name)
    assert NOTE.fullmatch(note or ""), note
    assert _length(tmp_path / "preview.mp4") == pytest.approx(4.0, abs=0.15)
    assert streams(tmp_path / "preview.mp4")["audio"]["codec_name"] == "aac"


def test_poster_of_a_file_without_pictures(tmp_path: Path) -> None:
    tone = mediagen.make_media(tmp_path / "tone.wav", 3.0)
    with pytest.raises(MediaError) as caught:
        make_poster(tone, tmp_path / "poster.jpg", 3.0)
    assert str(caught.value) == "The poster could not be made: the file has no video track."
    assert "matches no streams" in caught.value.detail


@pytest.mark.parametrize(("stderr", "reached", "reason"), [
    # What ffmpeg 5 printed in this project's failures, address noise included.
    (["[mov,mp4,m4a,3gp,3g2,mj2 @ 0x55af] stream 1, offset 0x1b775a: partial file"], 3.34,
     "the file is cut short or damaged after 3.3 s"),
    (["[NULL @ 0x559b] Invalid NAL unit size (3969 > 3943).",
      "[NULL @ 0x559b] missing picture in access unit with size 3947",
      "cut.mp4: corrupt input packet in stream 0"], 0.0, "the video data is damaged"),
    (["[aac @ 0x564e] Number of bands (14) exceeds limit (10)."], 12.0,
     "the audio data is damaged after 12.0 s"),
    (["[aac @ 0x1] Number of bands (14) exceeds limit (10).",
      "[h264 @ 0x2] error while decoding MB 8 7"], None, "the media data is damaged"),
    (["/srv/media/videos/x/source.mp4: No such file or directory"], None,
     "the source file is missing on the server"),
    (["Error opening output file: No space left on device"], None, "the server's disk is full"),
    (["[libx264 @ 0x1] something unforeseen"], 1.0, "ffmpeg stopped with an error"),
])
def test_failure_reasons_read_as_a_user_would_put_them(stderr: list[str], reached: float | None,
                                                       reason: str) -> None:
    assert ffrun.failure_reason(stderr, reached) == reason


# --- files whose first stream is not the one to use ------------------------------------------

# A cover picture ahead of the video: in MP4 as cover art or as a one-frame track, in
# Matroska as ffmpeg writes cover art (a one-frame track) or as a one-frame track flagged
# default like the video.
COVER_FIRST = [(".mp4", "attached"), (".mp4", "track"), (".mkv", "attached"),
               (".mkv", "track")]
# The quarters of a 640x360 picture, and of the first two 160x90 tiles of a storyboard.
QUARTERS = [(0, 0, 320, 180), (320, 0, 320, 180), (0, 180, 320, 180), (320, 180, 320, 180)]
TILE_QUARTERS = [(x + dx, dy, 80, 45) for x in (0, 160) for dx in (0, 80) for dy in (0, 45)]


@pytest.fixture(scope="module")
def moving(gen_dir: Path) -> Path:
    """testsrc2 with a tone, a keyframe a second: its storyboard needs keyframes alone."""
    return mediagen.make_video(gen_dir / "moving.mp4", duration=4.0, size="640x360", gop=25)


def outputs(src: Path, out: Path) -> dict[str, Any]:
    """What the steps make of src (probe, poster, storyboard, preview, audio), and the
    colours a viewer sees in them."""
    out.mkdir()
    info = probe(src)
    fmt = {"format_name": info.format_name}
    make_poster(src, out / "poster.jpg", info.duration, **fmt)
    board = make_storyboard(src, out / "storyboard.jpg", out / "storyboard.vtt",
                            info.duration or 0.0, info.width or 0, info.height or 0,
                            **fmt)
    transcode_preview(src, out / "preview.mp4", info.duration, **fmt)
    extract_audio(src, out / "audio.wav", info.duration, **fmt)
    return {"info": info, "board": board,
            "poster": patch_colours(out / "poster.jpg", QUARTERS),
            "tiles": patch_colours(out / "storyboard.jpg", TILE_QUARTERS),
            "preview": patch_colours(out / "preview.mp4", QUARTERS),
            "preview streams": ffmpeg.probe(str(out / "preview.mp4"))["streams"],
            "audio": ffmpeg.probe(str(out / "audio.wav"))["format"]}


@pytest.fixture(scope="module")
def moving_outputs(moving: Path, gen_dir: Path) -> dict[str, Any]:
    return outputs(moving, gen_dir / "moving-out")


@pytest.mark.parametrize(("suffix", "kind"), COVER_FIRST)
def test_a_cover_picture_ahead_of_the_video_is_passed_over(
        moving: Path, moving_outputs: dict[str, Any], tmp_path: Path, suffix: str,
        kind: str) -> None:
    src = mediagen.make_cover_first(tmp_path / f"cover-first{suffix}", moving, kind)
    assert streams(src)["video"]["width"] == 300  # ffmpeg's "v:0" is the cover
    seen = outputs(src, tmp_path / "out")
    info = seen["info"]
    assert (info.has_video, info.width, info.height, info.video_codec) == (
        True, 640, 360, "h264")
    assert info.duration == pytest.approx(4.0, abs=0.05)
    # Poster, tiles and preview show the moving picture, as the video alone gives them.
    cover = [mediagen.COVER] * 4
    for what in ("poster", "tiles", "preview"):
        assert_near(seen[what], moving_outputs[what], 8, what)
        assert not any(all(abs(a - b) <= 30 for a, b in zip(got, mediagen.COVER, strict=True))
                       for got in seen[what]), (what, seen[what], cover)
    # Two tiles sampled from keyframes (the cover's single frame gave one "cut short"),
    # from the start (Matroska's picture starts 23 ms after AAC's priming).
    board = seen["board"]
    assert (board.count, board.keyframes_only) == (2, True)
    assert board.start == pytest.approx(board.offset) and board.start < 0.05
    kinds = [s["codec_type"] for s in seen["preview streams"]]
    assert sorted(kinds) == ["audio", "video"], kinds
    video = next(s for s in seen["preview streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (640, 360)
    assert float(video["duration"]) == pytest.approx(4.0, abs=0.1)
    assert float(seen["audio"]["duration"]) == pytest.approx(4.0, abs=0.1)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_black_opening_is_found_in_the_video_behind_a_cover(tmp_path: Path,
                                                               suffix: str) -> None:
    fade = mediagen.make_black_opening(tmp_path / "fade.mp4", black=3.0, picture=5.0, gop=25)
    src = mediagen.make_cover_first(tmp_path / f"cover-first{suffix}", fade)
    info = probe(src)
    board = make_storyboard(src, tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt",
                            info.duration, info.width, info.height,
                            format_name=info.format_name)
    assert board.keyframes_only
    assert board.start == pytest.approx(3.0, abs=0.1)
    assert tile_brightness(tmp_path / "storyboard.jpg", board, 0) > 60


def pitch(path: Path) -> float:
    """The frequency (Hz) of the tone of a file's (only) sound track, from its zero
    crossings."""
    done = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0",
                           "-ac", "1", "-ar", "48000", "-f", "s16le", "-"],
                          capture_output=True, check=True)
    samples = struct.unpack(f"<{len(done.stdout) // 2}h", done.stdout)
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return crossings / 2 / (len(samples) / 48000)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_default_sound_track_is_used_not_a_commentary_ahead_of_it(tmp_path: Path,
                                                                      suffix: str) -> None:
    src = mediagen.make_commentary_first(tmp_path / f"film{suffix}")
    info = probe(src)
    assert info.has_audio and info.audio_codec == "aac"
    wav, preview = tmp_path / "audio.wav", tmp_path / "preview.mp4"
    extract_audio(src, wav, info.duration, format_name=info.format_name)
    transcode_preview(src, preview, info.duration, format_name=info.format_name)
    assert pitch(wav) == pytest.approx(440, rel=0.03)  # the commentary is at 1000 Hz
    kinds = [s["codec_type"] for s in ffmpeg.probe(str(preview))["streams"]]
    assert sorted(kinds) == ["audio", "video"], kinds
    assert pitch(preview) == pytest.approx(440, rel=0.03)


def test_a_single_track_file_is_read_as_before(moving: Path) -> None:
    # Without dispositions to go by (or all default), the first stream of each kind.
    found = first_streams(moving)
    assert (found.video.get("codec_name"), found.audio.get("codec_name")) == ("h264", "aac")


def ghost_share(picture: Path, frame: int = 0) -> float:
    """Of the pixels of a picture's frame that are not black, the share that are grey: a
    white bar on black, scaled, has grey only along its edges; its two fields scaled
    together (not deinterlaced) leave a grey band, the bar's ghost, along each side."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(picture), "-vf",
         f"select=eq(n\\,{frame}),format=gray", "-frames:v", "1", "-f", "rawvideo", "-"],
        capture_output=True, check=True)
    grey = sum(1 for level in done.stdout if 50 < level < 200)
    return grey / sum(1 for level in done.stdout if level >= 50)


def test_interlaced_video_is_deinterlaced_in_every_picture(tmp_path: Path) -> None:
    src = mediagen.make_interlaced(tmp_path / "pal.ts")
    assert streams(src)["video"]["field_order"] == "tt"
    info = probe(src)
    preview = tmp_path / "preview.mp4"
    transcode_preview(src, preview, info.duration, has_audio=False,
                      format_name=info.format_name)
    assert streams(preview)["video"]["field_order"] == "progressive"
    poster = tmp_path / "poster.jpg"
    make_poster(src, poster, info.duration, format_name=info.format_name)
    sprite, vtt = tmp_path / "storyboard.jpg", tmp_path / "storyboard.vtt"
    make_storyboard(src, sprite, vtt, info.duration, info.width, info.height,
                    format_name=info.format_name)
    shares = {"preview": ghost_share(preview, frame=10), "poster": ghost_share(poster),
              "storyboard": ghost_share(sprite)}
    assert all(share < 0.05 for share in shares.values()), shares


def test_the_pipeline_benchmark_runs_by_hand_the_commands_the_steps_run(
        clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/pipeline.py's reference ("by hand") runs the ffmpeg commands the steps run,
    option for option, less only the progress reporting: when the service stopped passing
    -xerror and passed -max_error_rate instead, the reference kept its own copy of the
    global options and compared vidpipe with commands vidpipe no longer ran."""
    from bench.pipeline import capture_commands, single_pass_command

    ran: list[list[str]] = []
    real_popen = subprocess.Popen

    class Recorded(real_popen):  # the real Popen, which remembers the steps' ffmpeg argv
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            if args[0] == "ffmpeg" and "-progress" in args:
                ran.append(list(args))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    info = probe(clip)
    out = tmp_path / "steps"
    out.mkdir()
    extract_audio(clip, out / "audio.wav", info.duration)
    make_poster(clip, out / "poster.jpg", info.duration)
    make_storyboard(clip, out / "storyboard.jpg", out / "storyboard.vtt", info.duration,
                    info.width, info.height)
    transcode_preview(clip, out / "preview.mp4", info.duration, has_audio=info.has_audio,
                      threads=0)
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    by_hand = tmp_path / "by-hand"
    by_hand.mkdir()
    captured = capture_commands(clip, by_hand, info, 0)

    def shape(argv: list[str], *, reporting: bool) -> list[str]:
        """The argv with its file names as <file> and, for the steps', without -progress
        reporting (ffrun.REPORTING_ARGS)."""
        argv = [("<file>" if str(tmp_path) in a else a) for a in argv]
        if reporting:
            at = next(i for i in range(len(argv))
                      if tuple(argv[i:i + len(ffrun.REPORTING_ARGS)]) == ffrun.REPORTING_ARGS)
            del argv[at:at + len(ffrun.REPORTING_ARGS)]
        return argv

    assert [shape(c, reporting=False) for c in captured.values()] == [
        shape(c, reporting=True) for c in ran]
    for argv in [*captured.values(), single_pass_command(clip, by_hand, info, 0)]:
        assert "-xerror" not in argv
        assert argv[argv.index("-max_error_rate") + 1] == str(ffrun.MAX_DAMAGED_SHARE)
