"""The baseline of bench.polling: a bare Flask app with one endpoint answering a progress poll.

`GET /progress` returns the JSON document in the file named by BARE_DOC (bench.polling
saves there the body vidpipe itself answers, so both send the same bytes), serialized per
request with Flask's jsonify, with a constant strong ETag and `Cache-Control: no-cache`;
If-None-Match with that ETag gets a bodiless 304, as vidpipe does. No database, no
extensions, no hooks: what any Flask endpoint costs under the same gunicorn settings.
`POST /videos/<id>/run_sync` (bench.trigger's baseline) answers 202 with a small JSON body.

    BARE_DOC=doc.json gunicorn -c gunicorn.conf.py bench.bare_app:app
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, Response, jsonify, request

SAMPLE = {
    "video_id": "00000000-0000-4000-8000-000000000000", "task_id": None, "mode": None,
    "status": "pending", "progress": 0.0, "subtasks": [], "created_at": None,
    "started_at": None, "finished_at": None, "error": None, "eta_seconds": None,
}
ETAG = "bare-progress-1"

app = Flask(__name__)
_doc_path = os.environ.get("BARE_DOC")
DOC = json.loads(Path(_doc_path).read_text()) if _doc_path else SAMPLE


@app.post("/videos/<video_id>/run_sync")
def trigger(video_id: str):
    """bench.trigger's baseline: a POST answered 202 with a small JSON body, nothing done."""
    url = f"/videos/{video_id}/progress"
    return jsonify({"task_id": video_id, "video_id": video_id, "status": "queued",
                    "message": "processing started", "progress_url": url}), 202, {"Location": url}


@app.get("/progress")
def progress():
    headers = {"ETag": f'"{ETAG}"', "Cache-Control": "no-cache, private"}
    if request.if_none_match.contains_weak(ETAG):
        return Response(status=304, headers=headers)
    response = jsonify(DOC)
    response.headers.update(headers)
    return response
