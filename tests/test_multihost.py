"""Workers on separate network hosts, with no shared disk (tests/hosts.py builds them).

One server host (private PostgreSQL, private Redis, the web app) and two worker hosts, each
in a network namespace and a mount namespace of its own, reached over veth links: what a
team gets when it adds machines (docs/DEPLOY.md). Root only; everything is removed after
the module, even when a test fails.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import ffmpeg
import pytest
import requests

from tests import hosts, mediagen
from tests.helpers import subtasks, wait_for
from webapp.services.storage import ARTIFACT_NAMES

pytestmark = pytest.mark.e2e

# Speech keeps the runs short and gives whisper something to write (tiny.en: English).
SENTENCES = ("Six videos travel between the hosts today.",
             "The first worker downloads the source over the network.",
             "Captions are written where the audio was heard.",
             "Nothing of the server's disk can be seen from here.",
             "A storyboard shows the video at a glance.",
             "The preview is uploaded when its step is done.")
WORKER_ENV = {"WHISPER_MODEL": "tiny.en"}
TAKEOVER_LIMIT = 60.0  # seconds from a host's link going down to its step done elsewhere


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("the multi-host tests build network namespaces: run them as root")
    base = tmp_path_factory.mktemp("hosts")
    with hosts.Site(base) as built:
        built.start_server()
        for name in ("w1", "w2"):
            built.start_worker(built.add_worker_host(name), **WORKER_ENV)
        yield built
        # On a failure, the hosts' logs say what happened.
        for log in sorted(built.logs.iterdir()):
            print(f"--- {log.name} (tail) ---\n{built.log_tail(log.name, 4000)}")
    left = hosts.leftovers()
    assert not left, f"namespaces left behind: {left}"
    assert not list(Path("/etc/netns").glob(f"vp{built.run}-*"))


def upload(site: hosts.Site, path: Path) -> str:
    with open(path, "rb") as fh:
        resp = site.api.post(site.url + "/api/v1/videos", files={"file": (path.name, fh)},
                             timeout=60)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def trigger(site: hosts.Site, vid: str) -> None:
    resp = site.api.post(f"{site.url}/api/v1/videos/{vid}/reprocess", timeout=30)
    assert resp.status_code == 202, resp.text


def state_of(site: hosts.Site, vid: str) -> dict:
    resp = site.api.get(f"{site.url}/api/v1/videos/{vid}/reprocess", timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


def ended(site: hosts.Site, vids: list[str], timeout: float) -> dict[str, dict]:
    def check():
        states = {vid: state_of(site, vid) for vid in vids}
        return states if all(s["status"] not in ("queued", "running")
                             for s in states.values()) else None
    return wait_for(check, timeout=timeout, interval=1, what="every run ending")


def artifacts(site: hosts.Site, vid: str) -> dict[str, bytes]:
    listed = site.api.get(f"{site.url}/api/v1/videos/{vid}/artifacts", timeout=30).json()
    return {a["name"]: site.api.get(f"{site.url}/api/v1/videos/{vid}/artifacts/{a['name']}",
                                    timeout=60).content for a in listed}


def streams(data: bytes, folder: Path) -> list[tuple]:
    path = folder / f"probe-{hashlib.sha256(data).hexdigest()[:12]}.mp4"
    path.write_bytes(data)
    try:
        info = ffmpeg.probe(str(path))
    finally:
        path.unlink()
    return [(s["codec_type"], s["codec_name"], s.get("width"), s.get("height"),
             round(float(s["duration"]), 1)) for s in info["streams"]]


def parts_on_server(site: hosts.Site) -> list[Path]:
    return [p for p in site.media_root.rglob("*.part")]


def test_six_uploads_are_processed_by_both_hosts_like_on_one_host(site, tmp_path):
    w1, w2 = site.hosts["w1"], site.hosts["w2"]
    # What the worker hosts can see: their own MEDIA_ROOT, none of the server's files.
    assert site.sees(w1, site.media_root)[0].startswith("error:")  # no such folder there
    assert site.sees(w2, site.pg.data)[0].startswith("error:")
    assert site.sees(w1, w2.media_root) == []

    videos = [mediagen.make_speech_video(tmp_path / f"v{i}.mp4", text)
              for i, text in enumerate(SENTENCES)]
    vids = [upload(site, path) for path in videos]
    for vid in vids:
        trigger(site, vid)
    states = ended(site, vids, timeout=420)
    ran_on = set()
    for state in states.values():
        assert (state["status"], state["progress"]) == ("completed", 100), state
        ran_on |= {s["worker"] for s in state["subtasks"]}
    assert ran_on == {"w1", "w2"}, ran_on  # both hosts did part of the work
    remote = {vid: artifacts(site, vid) for vid in vids}
    for vid in vids:
        assert sorted(remote[vid]) == sorted(ARTIFACT_NAMES), sorted(remote[vid])
    for host in (w1, w2):  # each downloaded into its own cache, and left no work folder
        assert any(p.name.startswith("source-") for p in (host.media_root / "cache").iterdir())
        assert not [p for p in (host.media_root / "work").rglob("*") if p.is_file()]
    assert not parts_on_server(site)

    # The same videos processed on one host: a worker on the server with its MEDIA_ROOT.
    for host in (w1, w2):
        site.stop_workers(host)
    try:
        for vid in vids:
            trigger(site, vid)
        local = subprocess.run(
            ["ip", "netns", "exec", site.server.namespace, sys.executable, "-m", "jobs.worker",
             "--burst"], cwd=hosts.PROJECT_ROOT, capture_output=True, text=True, timeout=600,
            env={**site.web_env, "WORKER_NAME": "web-host", **WORKER_ENV})
        assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
        for vid, state in ended(site, vids, timeout=60).items():
            assert state["status"] == "completed", state
            assert {s["worker"] for s in state["subtasks"]} == {"web-host"}
            here = artifacts(site, vid)
            for name in ARTIFACT_NAMES:
                if name == "preview.mp4" and here[name] != remote[vid][name]:
                    assert streams(here[name], tmp_path) == streams(remote[vid][name], tmp_path)
                else:
                    assert here[name] == remote[vid][name], (vid, name)
    finally:
        for host in (w1, w2):
            site.start_worker(host, **WORKER_ENV)


def test_a_step_cut_off_with_its_host_completes_on_the_other(site, tmp_path):
    w1, w2 = site.hosts["w1"], site.hosts["w2"]
    video = mediagen.make_video(tmp_path / "long.mp4", duration=16, size="960x540")
    vid = upload(site, video)
    site.stop_workers(w2)  # w1 alone, so that it is w1 that runs the transcode
    cut = None
    try:
        trigger(site, vid)

        def transcoding_on_w1():
            step = subtasks(state_of(site, vid))["transcode"]
            return (step["status"] == "running" and step["worker"] == "w1"
                    and 10 <= step["progress"] <= 80 and step)
        first = wait_for(transcoding_on_w1, timeout=180, interval=0.2,
                         what="the transcode running on w1")
        site.start_worker(w2, **WORKER_ENV)
        w1.link_down()
        cut = time.monotonic()

        def done_on_w2():
            step = subtasks(state_of(site, vid))["transcode"]
            assert step["status"] in ("running", "pending", "completed"), step
            return step["status"] == "completed" and step
        done = wait_for(done_on_w2, timeout=TAKEOVER_LIMIT, interval=0.5,
                        what=f"the transcode completing on w2 within {TAKEOVER_LIMIT:.0f} s")
        took = time.monotonic() - cut
        assert done["worker"] == "w2" and done["attempt"] > first["attempt"], done
        print(f"the transcode completed on w2 {took:.1f} s after w1's link went down")
        state = ended(site, [vid], timeout=120)[vid]
        assert (state["status"], state["progress"]) == ("completed", 100), state
        published = artifacts(site, vid)
    finally:
        w1.link_up()

    # Back on the network, w1's attempt is stale: whatever it sends is refused.
    task_id = state["task_id"]
    refused = f"refused files of transcode of task {task_id}, attempt {first['attempt']}"

    def w1_gave_up():
        if refused in site.logs_text("web.log"):
            return "refused"
        # or it learnt from the database first that it was replaced, and stopped
        stopped = f"transcode of task {task_id}: attempt {first['attempt']} stopped"
        return "stopped" if stopped in site.logs_text("worker-w1.log") else None
    how = wait_for(w1_gave_up, timeout=150, interval=1, what="w1's stale attempt ending")
    print(f"w1's stale attempt: {how}")
    # Sent from w1 now, the stale attempt's file is refused over the network too.
    probe = subprocess.run(
        ["ip", "netns", "exec", w1.namespace, sys.executable, "-c",
         "import sys, requests; r = requests.put(sys.argv[1], data=b'x', headers={"
         "'Authorization': 'Bearer ' + sys.argv[2], 'X-Sha256': '2d711642b726b04401627ca9fb"
         "ac32f5c8530fb1903cc4db02258717921a4881'}, timeout=10); print(r.status_code)",
         f"http://{hosts.SERVER_NAME}:{hosts.WEB_PORT}/internal/v1/tasks/{task_id}/steps/"
         f"transcode/{first['attempt']}/files/preview.mp4", hosts.WORKER_TOKEN],
        capture_output=True, text=True, timeout=60, cwd=hosts.PROJECT_ROOT)
    assert probe.stdout.strip() == "409", probe.stdout + probe.stderr
    time.sleep(2)
    assert artifacts(site, vid) == published  # nothing the stale attempt sent changed them
    after = subtasks(state_of(site, vid))["transcode"]
    assert (after["status"], after["worker"], after["attempt"]) == (
        "completed", "w2", done["attempt"])
    assert not parts_on_server(site)


def _noisy_video(dst: Path) -> Path:
    """A 720p video that compresses badly: big enough for transfers that take seconds."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=1280x720:rate=25:duration=10,noise=alls=30:allf=t", "-f", "lavfi",
         "-i", "sine=frequency=300:duration=10", "-c:v", "libx264", "-preset", "ultrafast",
         "-crf", "20", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(dst)],
        capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr
    return dst


def test_the_web_host_restarting_mid_transfer_loses_nothing(site, tmp_path):
    w1, w2 = site.hosts["w1"], site.hosts["w2"]
    video = _noisy_video(tmp_path / "noisy.mp4")
    size = video.stat().st_size
    assert size > 8_000_000, size
    vid = upload(site, video)
    for host in (w1, w2):
        site.shape(host, "24mbit")  # about 3 MB/s: transfers of seconds
    try:
        trigger(site, vid)

        def downloading():
            return [p for h in (w1, w2) for p in (h.media_root / "cache").glob(
                f".source-{vid}.*.part") if p.stat().st_size > size // 5]
        wait_for(downloading, timeout=120, interval=0.02, what="a source download under way")
        site.kill_web()
        time.sleep(1)
        site.start_web()

        def uploading():
            return [p for p in site.media_root.rglob(".preview.mp4.*.part")
                    if p.stat().st_size > 200_000]
        wait_for(uploading, timeout=300, interval=0.02, what="the preview's upload under way")
        site.kill_web()
        time.sleep(1)
        site.start_web()
        state = ended(site, [vid], timeout=300)[vid]
    finally:
        for host in (w1, w2):
            site.unshape(host)
    assert (state["status"], state["progress"]) == ("completed", 100), state
    logs = site.logs_text("worker-w1.log") + site.logs_text("worker-w2.log")
    assert f"resuming the download of /videos/{vid}/source at byte" in logs
    assert "uploading preview.mp4" in logs and "trying again" in logs
    got = artifacts(site, vid)
    assert sorted(got) == sorted(ARTIFACT_NAMES)
    preview = streams(got["preview.mp4"], tmp_path)
    assert [s[0] for s in preview] == ["video", "audio"], preview
    assert abs(preview[0][4] - 10.0) <= 0.2, preview
    assert not parts_on_server(site)  # the cut upload's piece went with the restart
    for host in (w1, w2):
        assert not list((host.media_root / "cache").glob(".*.part"))
    # Every source download on the workers' side matches the upload.
    digest = hashlib.sha256(video.read_bytes()).hexdigest()
    for host in (w1, w2):
        cached = host.media_root / "cache" / f"source-{vid}"
        if cached.exists():
            assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    resp = requests.get(site.url + "/healthz", timeout=10)
    assert resp.status_code == 200
