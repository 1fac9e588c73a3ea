"""End to end: real uploads processed by real RQ workers with ffmpeg and whisper."""

from __future__ import annotations

import re
import subprocess

import ffmpeg
import pytest
import srt
import webvtt
from rq.job import Job, JobStatus
from sqlalchemy import select

from tests import mediagen
from tests.conftest import run_worker
from tests.helpers import progress_of, subtasks, upload_ok, wait_for
from webapp.services.storage import ARTIFACT_NAMES

pytestmark = pytest.mark.e2e

SENTENCE = "Hello and welcome. Please call me tomorrow morning about the weather report."
VTT_TIME = r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture(scope="module")
def speech_video(tmp_path_factory):
    return mediagen.make_speech_video(tmp_path_factory.mktemp("m") / "talk.mp4", SENTENCE,
                                      size="640x360")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def artifact(client, vid: str, name: str, **kw):
    return client.get(f"/api/v1/videos/{vid}/artifacts/{name}", **kw)


def test_speech_video_is_processed_into_every_artifact(client, speech_video, tmp_path):
    vid = upload_ok(client, speech_video)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    state = progress_of(client, vid)
    assert (state["status"], state["progress"], state["error"]) == ("completed", 100, None)
    assert all(s["status"] == "completed" and s["attempt"] == 1 for s in state["subtasks"])
    listed = client.get(f"/api/v1/videos/{vid}/artifacts").get_json()
    assert sorted(a["name"] for a in listed) == sorted(ARTIFACT_NAMES)
    assert all(a["size_bytes"] > 0 for a in listed)

    transcript = artifact(client, vid, "transcript.json").get_json()
    assert transcript["language"] == "en"
    expected = words(SENTENCE)
    assert len(expected & words(transcript["text"])) >= 0.8 * len(expected), transcript["text"]
    ends = [s["end"] for s in transcript["segments"]]
    assert ends == sorted(ends) and ends[-1] <= transcript["duration"] + 0.5

    vtt = artifact(client, vid, "captions.vtt").get_data(as_text=True)
    assert vtt.startswith("WEBVTT")
    cues = list(srt.parse(artifact(client, vid, "captions.srt").get_data(as_text=True)))
    assert len(re.findall(VTT_TIME, vtt)) == len(cues)
    # The captions say what the transcript says, in cues of at most two lines of 42.
    spoken = " ".join(s["text"] for s in transcript["segments"]).split()
    assert " ".join(c.content for c in cues).split() == spoken
    assert all(len(c.content.splitlines()) <= 2 for c in cues), cues
    assert all(len(line) <= 42 for c in cues for line in c.content.splitlines()), cues

    preview = tmp_path / "preview.mp4"
    preview.write_bytes(artifact(client, vid, "preview.mp4").data)
    streams = {s["codec_type"]: s for s in ffmpeg.probe(str(preview))["streams"]}
    assert streams["video"]["codec_name"] == "h264" and streams["audio"]["codec_name"] == "aac"
    assert int(streams["video"]["height"]) == 360

    audio = tmp_path / "audio.wav"
    audio.write_bytes(artifact(client, vid, "audio.wav").data)
    astream = ffmpeg.probe(str(audio))["streams"][0]
    assert (astream["sample_rate"], astream["channels"]) == ("16000", 1)

    board = artifact(client, vid, "storyboard.vtt").get_data(as_text=True)
    tiles = re.findall(r"storyboard\.jpg#xywh=(\d+),(\d+),(\d+),(\d+)", board)
    assert len(tiles) >= 2
    assert artifact(client, vid, "poster.jpg").mimetype == "image/jpeg"


def test_captions_of_sound_that_starts_late_are_in_time_with_the_preview(client, tmp_path):
    # Screen recordings and edited exports often start their sound after the picture.
    delay = 3.0
    src = mediagen.make_speech_video(tmp_path / "late.mp4", SENTENCE, audio_delay=delay)
    found = {s["codec_type"]: s for s in ffmpeg.probe(str(src))["streams"]}
    assert float(found["audio"]["start_time"]) == pytest.approx(delay, abs=0.05)
    vid = upload_ok(client, src)["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    assert progress_of(client, vid)["status"] == "completed"

    preview = tmp_path / "preview.mp4"
    preview.write_bytes(artifact(client, vid, "preview.mp4").data)
    played = {s["codec_type"]: s for s in ffmpeg.probe(str(preview))["streams"]}
    assert float(played["audio"]["start_time"]) == pytest.approx(delay, abs=0.1)  # as sent
    # Nothing is said before the sound starts: the first caption is not early.
    cues = list(srt.parse(artifact(client, vid, "captions.srt").get_data(as_text=True)))
    assert cues and cues[0].start.total_seconds() >= delay - 0.5, cues[0]
    segments = artifact(client, vid, "transcript.json").get_json()["segments"]
    assert segments[0]["start"] >= delay - 0.5, segments[0]
    # The audio extracted for whisper keeps the preview's time.
    audio = tmp_path / "audio.wav"
    audio.write_bytes(artifact(client, vid, "audio.wav").data)
    assert float(ffmpeg.probe(str(audio))["format"]["duration"]) == pytest.approx(
        float(ffmpeg.probe(str(preview))["format"]["duration"]), abs=0.2)


def speech_span(media) -> tuple[float, float]:
    """Where the speech of a file's sound is: from the end of its opening silence to the
    start of its closing one (silencedetect, silences of 0.3 s or more; the sound's ends
    when there is none)."""
    done = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-i", str(media), "-map",
                           "0:a:0", "-af", "silencedetect=duration=0.3", "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    sound = next(s for s in ffmpeg.probe(str(media))["streams"] if s["codec_type"] == "audio")
    # (a track that starts late is timed so: no silence is decoded before it)
    start = float(sound.get("start_time", 0.0))
    end = start + float(sound["duration"])
    # (ffmpeg ends a silence that lasts to the end of the sound there)
    silences = [(float(a), float(b)) for a, b in re.findall(
        r"silence_start: ([\d.]+).*?silence_end: ([\d.]+)", done.stderr, re.S)]
    begins = silences[0][1] if silences and silences[0][0] < start + 0.05 else start
    ends = silences[-1][0] if silences and silences[-1][1] > end - 0.05 else end
    return begins, ends


def test_captions_of_a_late_stamped_rotated_video_are_in_time_with_the_preview(client,
                                                                                tmp_path):
    # A phone's portrait clip cut from a longer recording: its timestamps begin 1.2 s in,
    # its sound 1 s after its picture, and its picture is stored sideways.
    talk = mediagen.make_speech_video(tmp_path / "talk.mp4", SENTENCE, audio_delay=1.0)
    src = mediagen.make_phone_copy(talk, tmp_path / "portrait.mp4", start=1.2, rotation=90)
    found = {s["codec_type"]: s for s in ffmpeg.probe(str(src))["streams"]}
    assert float(found["video"]["start_time"]) == pytest.approx(1.2, abs=0.05)
    video = upload_ok(client, src)
    assert (video["width"], video["height"]) == (240, 320)
    vid = video["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    state = progress_of(client, vid)
    assert (state["status"], state["error"]) == ("completed", None), state

    preview = tmp_path / "preview.mp4"
    preview.write_bytes(artifact(client, vid, "preview.mp4").data)
    played = {s["codec_type"]: s for s in ffmpeg.probe(str(preview))["streams"]}
    assert (played["video"]["width"], played["video"]["height"]) == (240, 320)
    begins, ends = speech_span(preview)
    assert begins == pytest.approx(1.0, abs=0.3)  # after the picture's start, as sent
    # The captions cover the speech where the preview plays it, neither early nor late.
    vtt = tmp_path / "captions.vtt"
    vtt.write_bytes(artifact(client, vid, "captions.vtt").data)
    cues = webvtt.read(str(vtt)).captions
    assert cues, "no captions"
    first, last = (cues[0].start_time.in_milliseconds() / 1000,
                   cues[-1].end_time.in_milliseconds() / 1000)
    assert first == pytest.approx(begins, abs=0.5), (begins, cues[0])
    assert last == pytest.approx(ends, abs=0.5), (ends, cues[-1])


def colour_near(picture, colour, x: int, y: int, w: int, h: int) -> bool:
    """Whether a box of a picture (its first frame) is, on average, about `colour`."""
    done = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(picture), "-frames:v", "1", "-vf",
         f"crop={w}:{h}:{x}:{y},scale=1:1:flags=area,format=rgb24", "-f", "rawvideo", "-"],
        capture_output=True, check=True)
    return all(abs(a - b) <= 30 for a, b in zip(done.stdout[:3], colour, strict=True))


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_a_video_behind_its_cover_art_is_processed_from_the_video(client, speech_video,
                                                                  tmp_path, suffix):
    # Download tools and podcasts published as video put cover art first.
    src = mediagen.make_cover_first(tmp_path / f"talk{suffix}", speech_video)
    assert ffmpeg.probe(str(src))["streams"][0]["width"] == 300  # the cover, 300x300
    video = upload_ok(client, src)
    assert (video["has_video"], video["width"], video["height"]) == (True, 640, 360)
    vid = video["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    state = progress_of(client, vid)
    assert (state["status"], state["progress"], state["error"]) == ("completed", 100, None)
    assert all(s["status"] == "completed" for s in state["subtasks"]), state["subtasks"]

    files = {}
    for name in ("poster.jpg", "storyboard.jpg", "preview.mp4"):
        files[name] = tmp_path / name
        files[name].write_bytes(artifact(client, vid, name).data)
    shown = {s["codec_type"]: s for s in ffmpeg.probe(str(files["poster.jpg"]))["streams"]}
    assert (shown["video"]["width"], shown["video"]["height"]) == (640, 360)
    preview = ffmpeg.probe(str(files["preview.mp4"]))
    pictures = [s for s in preview["streams"] if s["codec_type"] == "video"]
    assert [(s["width"], s["height"]) for s in pictures] == [(640, 360)]
    assert float(pictures[0]["duration"]) == pytest.approx(video["duration"], abs=0.2)
    # The moving picture, nowhere the cover's colour (tiles are 160x90).
    for name, boxes in [("poster.jpg", [(0, 0, 320, 180), (320, 180, 320, 180)]),
                        ("preview.mp4", [(0, 0, 320, 180), (320, 180, 320, 180)]),
                        ("storyboard.jpg", [(0, 0, 160, 90), (160, 0, 160, 90)])]:
        for box in boxes:
            assert not colour_near(files[name], mediagen.COVER, *box), (name, box)
    board = artifact(client, vid, "storyboard.vtt").get_data(as_text=True)
    assert len(re.findall(r"storyboard\.jpg#xywh=", board)) >= 2
    text = artifact(client, vid, "transcript.json").get_json()["text"]
    assert {"call", "tomorrow", "morning", "weather"} <= words(text)


def test_a_processed_video_teaches_the_eta_of_the_next_run(client, db_session, tmp_path):
    """Each step that ran records what it cost (webapp/services/calibration.py): the next
    run, still queued, already has an ETA, about what the first run took."""
    from webapp.models import StepCost

    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=4.0, audio=False)
    vid = upload_ok(client, clip)["id"]
    before = client.post(f"/api/v1/videos/{vid}/run_sync")
    assert before.status_code == 202
    assert progress_of(client, vid)["eta_seconds"] is None  # a new installation: no history
    run_worker()
    first = progress_of(client, vid)
    assert first["status"] == "completed"
    runs = db_session.scalars(select(StepCost)).all()
    assert sorted(r.key for r in runs) == ["thumbnails", "transcode"]  # what ran here
    assert all(r.seconds > 0 for r in runs)
    assert [r.units for r in runs if r.key == "thumbnails"] == [pytest.approx(4.0, abs=0.1)]
    assert client.post(f"/api/v1/videos/{vid}/reprocess").status_code == 202
    queued = progress_of(client, vid)
    assert queued["status"] == "queued"
    assert queued["eta_seconds"] == pytest.approx(sum(r.seconds for r in runs), abs=0.2)
    run_worker()
    assert progress_of(client, vid)["status"] == "completed"


def test_artifacts_support_range_requests(client, speech_video):
    vid = upload_ok(client, speech_video)["id"]
    client.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    full = artifact(client, vid, "preview.mp4")
    assert full.headers["Accept-Ranges"] == "bytes"
    part = artifact(client, vid, "preview.mp4", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(full.data)}"
    assert part.data == full.data[100:200]
    assert artifact(client, vid, "captions.vtt").mimetype == "text/vtt"


def test_video_without_audio_skips_audio_steps(client, tmp_path):
    silent = mediagen.make_video(tmp_path / "silent.mp4", duration=3.0, audio=False)
    vid = upload_ok(client, silent)["id"]
    client.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    state = progress_of(client, vid)
    subs = subtasks(state)
    assert state["status"] == "completed" and state["progress"] == 100
    assert subs["extract_audio"]["status"] == subs["transcribe"]["status"] == "skipped"
    names = {a["name"] for a in client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}
    assert names == {"poster.jpg", "storyboard.jpg", "storyboard.vtt", "preview.mp4"}


def test_a_browser_recording_that_states_no_duration_is_processed(client, tmp_path):
    # MediaRecorder's WebM (Chrome, Firefox) has no duration in its header and no index.
    src = mediagen.make_recorded_webm(tmp_path / "recording.webm", duration=3.0)
    assert "duration" not in ffmpeg.probe(str(src))["format"]
    video = upload_ok(client, src)
    assert video["duration"] == pytest.approx(3.0, abs=0.1)  # measured from the data
    vid = video["id"]
    assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
    run_worker()
    state = progress_of(client, vid)
    assert (state["status"], state["error"]) == ("completed", None), state
    assert all(s["status"] == "completed" for s in state["subtasks"]), state["subtasks"]
    board = artifact(client, vid, "storyboard.vtt").get_data(as_text=True)
    assert len(re.findall(r"storyboard\.jpg#xywh=", board)) == 2
    preview = tmp_path / "preview.mp4"
    preview.write_bytes(artifact(client, vid, "preview.mp4").data)
    assert float(ffmpeg.probe(str(preview))["format"]["duration"]) == pytest.approx(3.0,
                                                                                  abs=0.1)


def test_audio_only_file_is_transcribed(client, tmp_path):
    audio = mediagen.make_audio_only(tmp_path / "voice.m4a", SENTENCE)
    vid = upload_ok(client, audio)["id"]
    client.post(f"/api/v1/videos/{vid}/run_sync")
    run_worker()
    state = progress_of(client, vid)
    assert state["status"] == "completed"
    names = {a["name"] for a in client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}
    assert names == {"audio.wav", "transcript.json", "captions.vtt", "captions.srt"}
    text = artifact(client, vid, "transcript.json").get_json()["text"]
    assert {"call", "tomorrow", "morning", "weather"} <= words(text)


def test_failed_step_is_reported_and_run_sync_resumes_only_it(client, speech_video, monkeypatch,
                                                             tmp_path):
    vid = upload_ok(client, speech_video)["id"]
    # A model folder that passes the start-up check (it holds a model.bin) but not loading:
    # an unknown name would stop the worker from starting at all.
    (tmp_path / "broken-model").mkdir()
    (tmp_path / "broken-model" / "model.bin").write_bytes(b"not a model")
    monkeypatch.setenv("WHISPER_MODEL", str(tmp_path / "broken-model"))
    client.post(f"/api/v1/videos/{vid}/reprocess")
    run_worker()
    state = progress_of(client, vid)
    subs = subtasks(state)
    assert state["status"] == "failed"
    assert subs["transcribe"]["status"] == "failed"
    assert "the whisper model could not be loaded" in subs["transcribe"]["error"]
    assert "Traceback" not in subs["transcribe"]["error"]
    assert "transcribe" in state["error"]
    assert all(subs[s]["status"] == "completed" for s in ("extract_audio", "thumbnails",
                                                           "transcode"))
    # The three completed steps' weight, plus what transcribe showed before whisper failed
    # to load the model (its estimate runs from the child's start, at a guessed pace).
    assert 50 <= state["progress"] < 100

    monkeypatch.delenv("WHISPER_MODEL")
    resumed = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()
    subs = subtasks(progress_of(client, vid))
    assert [n for n, s in subs.items() if s["reused"]] == ["extract_audio", "thumbnails",
                                                           "transcode"]
    assert subs["transcribe"]["status"] == "pending"
    run_worker()
    state = progress_of(client, vid)
    assert (state["task_id"], state["status"], state["progress"]) == (
        resumed["task_id"], "completed", 100)
    assert subtasks(state)["transcribe"]["attempt"] == 1


def test_failing_parent_does_not_leave_its_dependant_waiting(client, speech_video, settings,
                                                             redis_conn):
    vid = upload_ok(client, speech_video)["id"]
    source = next((settings.media_root / "videos" / vid).glob("source*"))
    # The file turns bad after upload (disk trouble, a bad copy): every step must fail cleanly.
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 3])
    task_id = client.post(f"/api/v1/videos/{vid}/run_sync").get_json()["task_id"]
    run_worker()
    state = progress_of(client, vid)
    subs = subtasks(state)
    assert state["status"] == "failed"
    assert subs["extract_audio"]["status"] == "failed"
    assert subs["transcribe"]["status"] == "cancelled"
    assert "extract_audio" in subs["transcribe"]["error"]
    assert Job.fetch(f"{task_id}-transcribe", connection=redis_conn).get_status() in (
        JobStatus.FINISHED,)
    assert client.get(f"/api/v1/videos/{vid}/artifacts").get_json() == []


def _running_step(client, vid, step):
    def check():
        sub = subtasks(progress_of(client, vid))[step]
        return sub["status"] == "running" and sub["progress"] > 0
    return check


@pytest.fixture
def long_video(tmp_path):
    return mediagen.make_video(tmp_path / "long.mp4", duration=6.0, size="1280x720")


def test_progress_moves_continuously_and_never_backwards(client, long_video, worker):
    vid = upload_ok(client, long_video)["id"]
    client.post(f"/api/v1/videos/{vid}/reprocess")
    seen = []

    def finished():
        state = progress_of(client, vid)
        seen.append(state["progress"])
        return state["status"] in ("completed", "failed")

    wait_for(finished, timeout=180, interval=0.05)
    assert progress_of(client, vid)["status"] == "completed"
    assert seen == sorted(seen), seen
    assert seen[-1] == 100
    assert len({p for p in seen if 0 < p < 100}) >= 3, seen


def test_cancel_stops_a_running_step(client, long_video, worker, redis_conn, settings):
    vid = upload_ok(client, long_video)["id"]
    task_id = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(_running_step(client, vid, "transcode"), timeout=60, interval=0.05)
    state = client.post(f"/api/v1/videos/{vid}/cancel").get_json()
    assert state["status"] == "cancelled"
    assert not [s for s in state["subtasks"] if s["status"] in ("pending", "running")]
    job = Job.fetch(f"{task_id}-transcode", connection=redis_conn)
    wait_for(lambda: job.get_status() == JobStatus.STOPPED, timeout=60)
    frozen = progress_of(client, vid)
    assert frozen["status"] == "cancelled"
    listed = {a["name"] for a in client.get(f"/api/v1/videos/{vid}/artifacts").get_json()}
    assert "preview.mp4" not in listed
    runs = settings.media_root / "videos" / vid / "runs"
    assert not list(runs.glob(f"{task_id}/transcode.*"))  # the cancelled attempt's files
    # the next run starts cleanly and completes
    client.post(f"/api/v1/videos/{vid}/run_sync")
    wait_for(lambda: progress_of(client, vid)["status"] == "completed", timeout=180)
    assert not list(runs.glob("*/*/.*part*"))
    assert not list(runs.glob(f"{task_id}/*"))


def test_force_replaces_a_running_task(client, long_video, worker, redis_conn):
    vid = upload_ok(client, long_video)["id"]
    first = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    wait_for(_running_step(client, vid, "transcode"), timeout=60, interval=0.05)
    resp = client.post(f"/api/v1/videos/{vid}/reprocess", json={"force": True})
    assert resp.status_code == 202
    second = resp.get_json()["task_id"]
    wait_for(lambda: progress_of(client, vid)["status"] == "completed", timeout=180)
    state = progress_of(client, vid)
    assert state["task_id"] == second
    assert Job.fetch(f"{first}-transcode", connection=redis_conn).get_status() == (
        JobStatus.STOPPED)

