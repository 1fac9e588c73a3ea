"""Redis keys of cancelled runs: they expire like failed jobs' (found in review)."""

from __future__ import annotations

import pytest

from tests import mediagen
from tests.helpers import upload_ok


@pytest.mark.parametrize("how", ["cancel", "force"])
def test_jobs_of_a_cancelled_task_do_not_stay_in_redis_forever(client, settings, redis_conn,
                                                               tmp_path, how):
    """A task cancelled (or replaced by a forced run) before its jobs ran: RQ's cancel keeps
    the jobs' hashes with no expiry, so every cancelled run would leave keys for good."""
    from webapp.config import STEPS
    from webapp.services import queue

    clip = mediagen.make_video(tmp_path / "clip.mp4", duration=2.0)
    vid = upload_ok(client, clip)["id"]
    old = client.post(f"/api/v1/videos/{vid}/reprocess").get_json()["task_id"]
    if how == "cancel":
        assert client.post(f"/api/v1/videos/{vid}/cancel").status_code == 200
    else:
        assert client.post(f"/api/v1/videos/{vid}/reprocess?force=true").status_code == 202
    keys = [k for step in STEPS for k in (f"rq:job:{queue.job_id(old, step)}",
                                          f"rq:job:{queue.job_id(old, step)}:dependents",
                                          f"rq:job:{queue.job_id(old, step)}:dependencies")]
    forever = [k for k in keys if redis_conn.exists(k) and redis_conn.ttl(k) < 0]
    assert not forever, forever
