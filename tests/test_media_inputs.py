"""Hostile media: files that make ffmpeg open other files or connect elsewhere (playlists,
lists of files, image sequences, stream descriptions, a playlist inside an AVI). Each is
really uploaded (and, for what an older version may have stored, really processed) while
inotify watches the files it names and sockets listen where it points: every one is refused
with a sentence, and nothing outside the upload is opened or contacted.

Where plain ffprobe (ffmpeg's defaults) does fall for a file, the test shows that first:
the watch sees what the attack reaches, so its silence afterwards means something.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import update
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from tests import mediagen, procs
from tests.conftest import run_worker
from tests.helpers import assert_json_error, progress_of, top_level_boxes, upload, upload_ok
from webapp import create_app
from webapp.config import Settings
from webapp.models import ProcessingTask, Video
from webapp.services import ffrun, keyframes, mediainput
from webapp.services.ffrun import MediaError
from webapp.services.media.audio import extract_audio
from webapp.services.media.preview import transcode_preview
from webapp.services.media.probe import first_streams
from webapp.services.media.thumbnails import make_poster, make_storyboard

REASON = "it is {}, not an audio or video file of an accepted format"
REFUSED = "not a playable audio or video file: " + REASON


# --- watching what is opened and contacted ---------------------------------------------------


class OpenWatch(FileSystemEventHandler):
    """Every open of a file in some folders, by any process (inotify, through watchdog)."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self.opened: list[str] = []
        self._observer = Observer()

    def on_opened(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            self.opened.append(str(event.src_path))

    def __enter__(self) -> OpenWatch:
        for folder in self.folders:
            self._observer.schedule(self, str(folder), recursive=False)
        self._observer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observer.stop()
        self._observer.join(10)

    def others(self) -> list[str]:
        """The opens so far, canaries apart: one is opened in each folder and waited for,
        so every open made before it (events keep their order) has arrived."""
        canaries = []
        for folder in self.folders:
            canary = folder / ".canary"
            canary.write_bytes(b"")
            canaries.append(str(canary))
            with open(canary, "rb"):
                pass
        deadline = time.monotonic() + 10
        while not all(c in self.opened for c in canaries):
            assert time.monotonic() < deadline, "inotify never reported the canary"
            time.sleep(0.01)
        for canary in canaries:
            Path(canary).unlink()
        seen = [p for p in self.opened if p not in canaries]
        self.opened.clear()
        return seen


class TcpListener:
    """A TCP port on 127.0.0.1 that records every connection made to it."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.05)
        self.port = self.server.getsockname()[1]
        self.peers: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.server.accept()
            except TimeoutError:
                continue
            self.peers.append(peer)
            conn.close()

    def others(self) -> list[tuple[str, int]]:
        """The connections so far, but for a canary made now and waited for."""
        with socket.create_connection(("127.0.0.1", self.port)) as canary:
            mine = canary.getsockname()
            deadline = time.monotonic() + 10
            while mine not in self.peers:
                assert time.monotonic() < deadline, "the listener never saw the canary"
                time.sleep(0.01)
        return [p for p in self.peers if p != mine]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def tcp():
    listener = TcpListener()
    yield listener
    listener.close()


@pytest.fixture
def udp():
    """A UDP port on 127.0.0.1; read it with udp_received."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def udp_received(sock: socket.socket) -> list[bytes]:
    """The datagrams sent to it so far, but for a canary sent now (it arrives last)."""
    sock.sendto(b"canary", sock.getsockname())
    sock.settimeout(10)
    received = []
    while (data := sock.recv(65536)) != b"canary":
        received.append(data)
    return received


# --- hostile files ---------------------------------------------------------------------------


def hls(*segments: str) -> bytes:
    """An HLS playlist playing `segments` (paths or URLs) of 1 s each."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:1", "#EXT-X-MEDIA-SEQUENCE:0"]
    for segment in segments:
        lines += ["#EXTINF:1.0,", segment]
    return ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()


def ffconcat(*files: str) -> bytes:
    return ("ffconcat version 1.0\n" + "".join(f"file '{f}'\n" for f in files)).encode()


def sdp(port: int) -> bytes:
    """A session description: H.264 over RTP, to and from 127.0.0.1:port."""
    return (f"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=stream\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=video {port} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n").encode()


def _chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def avi_with_text(text: bytes) -> bytes:
    """An AVI whose one stream is GAB2 text ('txts'), its packet holding `text`: the "HLS
    inside AVI" file (the AVI demuxer probes the packet and opens a demuxer for it)."""
    # avih: 40 ms a frame, has an index flag, 1 frame, 1 stream
    avih = struct.pack("<14I", 40000, 0, 0, 0x10, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0)
    # strh: a text stream, 25 per second, 1 long
    strh = struct.pack("<4s4sIHHIIIIIIIIhhhh", b"txts", bytes(4), 0, 0, 0, 0, 1, 25, 0, 1,
                       0, 0, 0, 0, 0, 0, 0)
    # GAB2 packet: magic, version 2, an empty name, a flags word, the data's size, the data
    gab2 = b"GAB2\0" + struct.pack("<HIHI", 2, 0, 0, len(text)) + text
    body = (b"AVI "
            + _list(b"hdrl", _chunk(b"avih", avih),
                    _list(b"strl", _chunk(b"strh", strh), _chunk(b"strf", bytes(4))))
            + _list(b"movi", _chunk(b"00tx", gab2)))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def plain_ffprobe(path: Path, *options: str) -> None:
    """ffprobe with ffmpeg's defaults, as the service ran it before."""
    subprocess.run(["ffprobe", "-v", "quiet", *options, str(path)], timeout=60, check=False)


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return mediagen.make_video(tmp_path_factory.mktemp("m") / "clip.mp4", duration=1.0)


@pytest.fixture
def victim(client, settings, clip) -> Path:
    """Another user's video: its source is what the attacks name."""
    vid = upload_ok(client, clip, "private.mp4")["id"]
    return settings.media_root / "videos" / vid / "source.mp4"


@pytest.fixture
def frames(tmp_path) -> Path:
    """frame-001.png ... frame-003.png: an image sequence outside MEDIA_ROOT."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(1, 4):
        mediagen.make_image(folder / f"frame-{i:03d}.png", size="64x48")
    return folder


def refused_leaving_nothing(client, settings, db_session, data: bytes, name: str) -> str:
    """Upload `data` as `name`: 422, no new row, nothing stored; the message."""
    path = settings.media_root.parent / "hostile.bin"
    path.write_bytes(data)
    before = db_session.query(Video).count()
    body = assert_json_error(upload(client, path, name), 422)
    path.unlink()
    db_session.expire_all()
    assert db_session.query(Video).count() == before
    assert not list((settings.media_root / "staging").iterdir())
    assert str(settings.media_root) not in body["message"]
    return body["message"]


# --- at upload -------------------------------------------------------------------------------


def test_playlists_naming_another_videos_source_are_refused_unread(client, settings,
                                                                     db_session, victim):
    attacks = {"absolute path": hls(str(victim)), "file: URL": hls(f"file:{victim}")}
    with OpenWatch(victim.parent) as watch:
        for what, playlist in attacks.items():
            # ffmpeg's defaults read the other video through it
            path = settings.media_root.parent / "playlist.m3u8"
            path.write_bytes(playlist)
            plain_ffprobe(path)
            assert set(watch.others()) == {str(victim)}, what
            for name in ("holiday.m3u8", "holiday.mp4"):  # with and without the extension
                message = refused_leaving_nothing(client, settings, db_session, playlist, name)
                assert message == REFUSED.format("a playlist (hls)"), (what, name)
                assert watch.others() == [], (what, name)


def test_a_playlist_naming_a_local_listener_is_refused_without_contact(client, settings,
                                                                        db_session, tcp):
    playlist = hls(f"http://127.0.0.1:{tcp.port}/segment-0.ts",
                   f"http://127.0.0.1:{tcp.port}/segment-1.mp4")
    for name in ("live.m3u8", "live.mp4"):
        message = refused_leaving_nothing(client, settings, db_session, playlist, name)
        assert message == REFUSED.format("a playlist (hls)"), name
    assert tcp.others() == []


def test_concat_lists_and_image_sequences_are_refused_unread(client, settings, db_session,
                                                             victim, frames):
    pattern = str(frames / "frame-%03d.png")
    png = (frames / "frame-001.png").read_bytes()
    with OpenWatch(victim.parent, frames) as watch:
        for listing, reached in ((ffconcat(str(victim)), [str(victim)]),
                                 (ffconcat(pattern), [str(frames / "frame-001.png")])):
            # with its own safety off, the concat demuxer reads what the list names
            path = settings.media_root.parent / "list.ffconcat"
            path.write_bytes(listing)
            plain_ffprobe(path, "-safe", "0")
            assert reached[0] in watch.others()
            for name in ("list.ffconcat", "list.txt", "movie.mp4"):
                message = refused_leaving_nothing(client, settings, db_session, listing, name)
                assert message == REFUSED.format("a list of files (concat)"), name
                assert watch.others() == [], name
        # An image named as a sequence: a still image, never the sequence beside it.
        message = refused_leaving_nothing(client, settings, db_session, png, pattern)
        assert message == REFUSED.format("an image (png_pipe)")
        assert watch.others() == []


def test_stream_descriptions_are_refused_without_contact(client, settings, db_session, udp,
                                                         tcp):
    for port in (udp.getsockname()[1], tcp.port):
        for name in ("camera.sdp", "camera.mp4"):
            message = refused_leaving_nothing(client, settings, db_session, sdp(port), name)
            assert message == REFUSED.format("a stream description (sdp)"), name
    assert udp_received(udp) == []
    assert tcp.others() == []


def test_an_avi_embedding_a_playlist_is_refused_unread(client, settings, db_session, victim,
                                                       tcp):
    with OpenWatch(victim.parent) as watch:
        for playlist in (hls(str(victim)), hls(f"file:{victim}"),
                         hls(f"http://127.0.0.1:{tcp.port}/x.ts")):
            message = refused_leaving_nothing(client, settings, db_session,
                                              avi_with_text(playlist), "holiday.avi")
            assert message == "not a playable audio or video file: it has no audio or video" \
                              " stream"
            assert watch.others() == []
    assert tcp.others() == []


def test_an_upload_that_cannot_be_checked_in_time_is_422(settings, db_session, clip):
    """PROBE_TIMEOUT bounds the checks an upload waits for (here 1 ms: ffprobe alone takes
    longer to start)."""
    client = create_app(Settings.from_env(probe_timeout=0.001)).test_client()
    message = assert_json_error(upload(client, clip), 422)["message"]
    assert message == ("the file could not be read within the 0.001 s this server allows for"
                       " checking an upload; it may be damaged, or not an ordinary audio or"
                       " video file")
    db_session.expire_all()
    assert db_session.query(Video).count() == 0
    assert not list((settings.media_root / "staging").iterdir())


# --- what is accepted, and how it is stored --------------------------------------------------


@pytest.fixture(scope="module")
def large_mp4(tmp_path_factory) -> Path:
    """An ordinary MP4 of over 100 MB whose index (moov) is at the end, as most cameras and
    ffmpeg without +faststart write it."""
    folder = tmp_path_factory.mktemp("large")
    part = mediagen.make_video(folder / "part.mp4", duration=10.0, size="1280x720", rate=30)
    whole = mediagen.make_repeated(part, folder / "large.mp4", copies=12)
    part.unlink()
    return whole


def test_a_large_mp4_with_its_index_at_the_end_is_accepted(client, settings, large_mp4):
    boxes = top_level_boxes(large_mp4)
    assert boxes.index("mdat") < boxes.index("moov")
    assert large_mp4.stat().st_size > 100_000_000
    body = upload_ok(client, large_mp4, "camera.MP4")
    assert body["duration"] == pytest.approx(120.0, abs=0.5)
    assert (settings.media_root / "videos" / body["id"] / "source.mp4").is_file()


def test_sources_are_stored_with_the_suffix_of_their_probed_format(client, settings,
                                                                   tmp_path):
    cases = [  # (made as, uploaded as, stored as)
        ("clip.webm", "clip.m3u8", "source.mkv"),
        ("clip.mkv", "clip", "source.mkv"),
        ("tone.wav", "tone.mp4", "source.wav"),
        ("tone.mp3", "song.ffconcat", "source.mp3"),
        ("clip.mov", "clip.sdp", "source.mp4"),
    ]
    for made, sent, stored in cases:
        path = mediagen.make_media(tmp_path / made, duration=1.0)
        body = upload_ok(client, path, sent)
        assert body["original_filename"] == sent
        folder = settings.media_root / "videos" / body["id"]
        assert [p.name for p in folder.iterdir()] == [stored], (made, sent)


def test_an_mpeg_ts_whose_clock_jumps_lasts_as_long_as_its_data(client, settings, tmp_path):
    """A TS whose timestamps jump 60 s forward halfway (a recorder's clock reset, HLS
    segments joined across a discontinuity) is stated to last 62 s; ffmpeg reads it as
    its 2 s, closing the jump up, so every step failed as "the input ends at 2.0 s of
    62.0 s". It is recorded at 2 s, and its audio and preview are made."""
    src = mediagen.make_clock_jump(tmp_path / "jump.ts", duration=2.0, jump=60.0)
    stated = mediainput.ffprobe(src, "-show_entries", "format=duration")["format"]
    assert float(stated["duration"]) == pytest.approx(62.0, abs=0.2)
    body = upload_ok(client, src, "recording.ts")
    assert body["duration"] == pytest.approx(2.0, abs=0.1)
    source = next((settings.media_root / "videos" / body["id"]).glob("source.*"))
    extract_audio(source, tmp_path / "audio.wav", body["duration"], format_name="mpegts")
    preview = tmp_path / "preview.mp4"
    transcode_preview(source, preview, body["duration"], format_name="mpegts")
    made = mediainput.ffprobe(preview, "-show_entries", "format=duration")["format"]
    assert float(made["duration"]) == pytest.approx(2.0, abs=0.1)


# --- processing what an older version stored -------------------------------------------------


def _stored_as(settings, db_session, video_id: str, name: str, data: bytes | None,
               format_name: str | None = None) -> Path:
    """Make the video's source what an older version (or a swap on disk) left: the file
    renamed to `name`, its content replaced by `data`, its row saying format_name."""
    folder = settings.media_root / "videos" / video_id
    old = next(folder.glob("source.*"))
    new = folder / name
    old.rename(new)
    if data is not None:
        new.write_bytes(data)
    values = {"stored_name": name}
    if format_name is not None:
        values["format_name"] = format_name
    db_session.execute(update(Video).where(Video.id == video_id).values(**values))
    db_session.commit()
    return new


@pytest.mark.parametrize("format_name", ["hls", "mov,mp4,m4a,3gp,3g2,mj2", None])
def test_media_steps_never_read_what_a_stored_playlist_names(tmp_path, clip, format_name):
    """Each tool run of the steps, on a playlist stored as `format_name` (an older version's
    record, a file swapped on disk, or no format known), fails and opens nothing else."""
    victim = tmp_path / "victim" / "source.mp4"
    victim.parent.mkdir()
    victim.write_bytes(clip.read_bytes())
    src = tmp_path / "source.m3u8"
    src.write_bytes(hls(str(victim)))
    out = tmp_path / "out"
    out.mkdir()
    runs = {
        "audio": lambda: extract_audio(src, out / "a.wav", 1.0, format_name=format_name),
        "poster": lambda: make_poster(src, out / "p.jpg", 1.0, format_name=format_name),
        "storyboard": lambda: make_storyboard(
            src, out / "s.jpg", out / "s.vtt", 1.0, 320, 240, format_name=format_name),
        "preview": lambda: transcode_preview(src, out / "v.mp4", 1.0, format_name=format_name),
    }
    with OpenWatch(victim.parent) as watch:
        for what, step in runs.items():
            with pytest.raises(MediaError) as caught:
                step()
            message = str(caught.value)
            assert message.startswith("The ") and message.endswith("."), message
            if format_name == "hls":
                assert REASON.format("a playlist (hls)") in message, (what, message)
            assert str(tmp_path) not in message
        streams = first_streams(src, format_name)
        assert streams.length(streams.audio) is None
        assert keyframes.keyframe_gap(src, 1.0, format_name) is None
        assert watch.others() == []
    assert list(out.iterdir()) == []


@pytest.mark.e2e
def test_a_stored_playlist_fails_its_run_unread_and_older_sources_still_work(
        client, settings, db_session, victim, clip):
    """Videos an older version stored: a playlist kept as source.m3u8 (format hls), a
    source whose content was swapped for a playlist, and an ordinary one under an old name
    (source.mov). The playlists' runs fail with a sentence per step and never open the
    other video; the ordinary one completes."""
    ids = {what: upload_ok(client, clip, f"{what}.mp4")["id"]
           for what in ("hls", "swapped", "ordinary")}
    _stored_as(settings, db_session, ids["hls"], "source.m3u8", hls(str(victim)), "hls")
    _stored_as(settings, db_session, ids["swapped"], "source.mp4", hls(str(victim)))
    _stored_as(settings, db_session, ids["ordinary"], "source.mov", None)
    with OpenWatch(victim.parent) as watch:
        for vid in ids.values():
            assert client.post(f"/api/v1/videos/{vid}/run_sync").status_code == 202
        run_worker()
        assert watch.others() == []
    assert progress_of(client, ids["ordinary"])["status"] == "completed"
    for what in ("hls", "swapped"):
        state = progress_of(client, ids[what])
        assert state["status"] == "failed", (what, state)
        assert len(state["subtasks"]) == 4, state
        for step in state["subtasks"]:
            if step["name"] == "transcribe":  # not run: it needs the audio
                assert step["status"] == "cancelled", (what, step)
                continue
            assert step["status"] == "failed", (what, step)
            assert step["error"].startswith("The ") and step["error"].endswith("."), step
            if what == "hls":
                assert "it is a playlist (hls)" in step["error"], step
    db_session.expire_all()
    assert db_session.query(ProcessingTask).count() == 3


# --- keyframes: streamed, stopped early, stoppable -------------------------------------------


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """An hour at 25 fps, a keyframe every second: 90 000 packets for a few seconds' work."""
    folder = tmp_path_factory.mktemp("long")
    second = mediagen.make_video(folder / "second.mp4", duration=1.0, size="64x48",
                                 audio=False, gop=25)
    return mediagen.make_repeated(second, folder / "long.mp4", copies=3600)


def test_keyframe_gap_stops_at_the_first_gap_over_enough(tmp_path):
    src = mediagen.make_video(tmp_path / "src.mp4", duration=6.0, rate=25, gop=75, audio=False)
    assert keyframes.keyframe_gap(src, 6.0, enough=2.02) == pytest.approx(3.0, abs=0.05)
    assert keyframes.keyframe_gap(src, 6.0, enough=5.0) == pytest.approx(3.0, abs=0.05)


def test_keyframe_gap_reads_a_long_video_to_its_end(long_video):
    assert keyframes.keyframe_gap(long_video, 3600.0) == pytest.approx(1.0, abs=0.05)


def _ffprobe_children(mark: bytes = b"packet=pts_time") -> list[int]:
    """This process's children whose command line has `mark` (ffprobe's packet listing of
    keyframe_gap by default)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if mark in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return [pid for pid in pids if _parent(pid) == os.getpid()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_keyframe_gap_is_stopped_by_the_steps_stop_event(long_video):
    stop = threading.Event()
    outcome: list[object] = []

    def detect() -> None:
        with ffrun.stopping(stop):
            try:
                outcome.append(keyframes.keyframe_gap(long_video, 3600.0))
            except ffrun.Stopped as exc:
                outcome.append(exc)

    thread = threading.Thread(target=detect)
    thread.start()
    deadline = time.monotonic() + 60
    while not (running := _ffprobe_children()):
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.005)
    stop.set()  # while ffprobe lists packets: keyframe_gap cannot have returned yet
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], ffrun.Stopped), outcome
    assert not any(Path(f"/proc/{pid}").exists() and _parent(pid) == os.getpid()
                   for pid in running)

    with ffrun.stopping(stop), pytest.raises(ffrun.Stopped):  # already set: nothing starts
        keyframes.keyframe_gap(long_video, 3600.0)


def test_the_black_opening_probe_is_stopped_by_the_steps_stop_event(tmp_path):
    """The thumbnails step's look for a black opening runs ffmpeg through ffrun.reading,
    as keyframe_gap does, so a cancelled run kills it too: here one reading a source that
    never delivers (a FIFO nobody writes, as a hung network mount), which would have run
    on after the cancel for as long as the step's time limit."""
    from webapp.services.opening import black_opening

    source = tmp_path / "hung.mp4"
    os.mkfifo(source)
    stop = threading.Event()
    outcome: list[object] = []

    def look() -> None:
        with ffrun.stopping(stop):
            try:
                outcome.append(black_opening(source))
            except ffrun.Stopped as exc:
                outcome.append(exc)

    thread = threading.Thread(target=look)
    thread.start()
    running: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not (running := _ffprobe_children(b"blackframe")):
            assert time.monotonic() < deadline and thread.is_alive(), outcome
            time.sleep(0.005)
        stop.set()
        thread.join(10)
    finally:
        alive = [pid for pid in running if Path(f"/proc/{pid}").exists()]
        for pid in alive:  # a probe the stop did not end: it must not outlive the test
            procs.kill(pid)
        thread.join(10)
    assert not alive, "the stop left the probe's ffmpeg running"
    assert len(outcome) == 1 and isinstance(outcome[0], ffrun.Stopped), outcome


def test_input_options_fix_the_demuxer_of_a_probed_format():
    assert mediainput.input_options("mov,mp4,m4a,3gp,3g2,mj2")["f"] == "mov"
    assert mediainput.input_options("matroska,webm")["f"] == "matroska"
    assert mediainput.input_options()["protocol_whitelist"] == "file"
    assert "hls" not in mediainput.input_options()["format_whitelist"].split(",")
    for refused in ("hls", "concat", "image2", "sdp", "tty", "webvtt", "png_pipe", ""):
        with pytest.raises(MediaError):
            mediainput.input_options(refused)
