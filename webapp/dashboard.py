"""rq-dashboard (mounted at /rq by webapp.init_dashboard): what vidpipe changes in it."""

from __future__ import annotations

import json
import logging
import threading
import time

from flask import Flask, Response, current_app, make_response, render_template, request, url_for
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from werkzeug.exceptions import NotFound

log = logging.getLogger(__name__)
JOB_INFO = "rq_dashboard.job_info"  # the data of a job's page: /rq/<n>/data/job/<id>.json
COMPACT = "rq_dashboard.compact_queue"  # POST /rq/queue/<name>/compact
OVERVIEW = "rq_dashboard.queues_overview"  # /rq/, the dashboard's first page


def job_info(instance_number: int, job_id: str) -> dict:
    """rq-dashboard 0.9's job_info, with the ids of the job's dependencies read as RQ 3 gives
    them. It decoded them as bytes (RQ 2's), and RQ 3 gives str: the data of every job with
    a dependency (each transcription, after its audio) was a 500 with a traceback in the
    log, and the job's page stayed empty. A job that has expired is a 404, not a 500."""
    from rq_dashboard.web import config, format_job_description, serialize_date

    connection = current_app.redis_conn
    try:
        job = Job.fetch(job_id, serializer=config.serializer, connection=connection)
    except NoSuchJobError:  # expired (a day after it ended; a failed one, a week): no bug
        raise NotFound(f"no job {job_id} in the queue: it has expired, or never was") from None
    latest_result = job.latest_result()
    encoder = current_app.config.get("RQ_DASHBOARD_JSON_ENCODER", json.JSONEncoder)
    result = {
        "id": job.id,
        "created_at": serialize_date(job.created_at),
        "enqueued_at": serialize_date(job.enqueued_at),
        "started_at": serialize_date(job.started_at),
        "ended_at": serialize_date(job.ended_at),
        "origin": job.origin,
        "status": job.get_status(),
        "result": job.return_value(),
        "exc_info": latest_result.exc_string if latest_result else None,
        "description": format_job_description(job),
        "metadata": json.dumps(job.get_meta(), cls=encoder),
    }
    dependencies = [(raw.decode() if isinstance(raw, bytes) else str(raw)).split(":")[-1].strip()
                    for raw in job.dependency_ids]
    if dependencies:
        result["depends_on"] = dependencies
        status = []
        for dependency in dependencies:
            try:
                Job.fetch(dependency, serializer=config.serializer, connection=connection)
                status.append("active")
            except NoSuchJobError:
                status.append("expired")
        result["depends_on_status"] = status
    return result


def compact_queue(queue_name: str) -> dict:
    """rq-dashboard's "Compact" (drop the ids of deleted jobs from a queue), for an empty
    queue too: RQ renames the queue's list, which an empty queue does not have, and the
    button answered 500 with Redis's "no such key" and a traceback in the log."""
    from rq_dashboard.web import config

    queue = Queue(queue_name, serializer=config.serializer, connection=current_app.redis_conn)
    if queue.count:
        queue.compact()
    return {"status": "OK"}


def no_such_job(error: NoSuchJobError):
    """A job the dashboard's page still showed and that expired meanwhile (requeued twice,
    say): 404, not a 500 with a traceback."""
    from webapp.api import html_error

    return html_error(404, "Not Found", "no such job in the queue: it has expired, or never "
                                        "was; reload the page")


def queues_overview(instance_number: int):
    """rq-dashboard 0.9's first page (/rq/), letting Redis being down through to the app's
    handler (webapp.api.queue_down): a 503 saying the queue is unavailable, with one log
    line, as its other pages and data are. rq-dashboard caught it and answered 200 with a
    bare "Connection Error" heading: a monitor took it for up, a person for a broken page."""
    from rq import VERSION as rq_version
    from rq_dashboard.version import VERSION as rq_dashboard_version
    from rq_dashboard.web import escape_format_instance_list

    queues = Queue.all(connection=current_app.redis_conn)  # Redis down: the 503
    response = make_response(render_template(
        "rq_dashboard/queues.html",
        current_instance=instance_number,
        instance_list=escape_format_instance_list(current_app.config.get(
            "RQ_DASHBOARD_REDIS_URL")),
        queues=queues,
        rq_url_prefix=url_for(".queues_overview"),
        rq_dashboard_version=rq_dashboard_version,
        rq_version=rq_version,
        active_tab="queues",
        deprecation_options_usage=current_app.config.get("DEPRECATED_OPTIONS", False),
    ))
    response.headers.set("Cache-Control", "no-store")
    return response


QUEUE_OUTAGE = "vidpipe_queue_outage"
# How often a web process whose requests still meet Redis down says so again.
OUTAGE_REMINDER_SECONDS = 60.0


class QueueOutage:
    """The web process's log of a Redis outage its requests meet (webapp.api.queue_down):
    one warning when it starts, again at most once a minute while it lasts (with how many
    requests were answered 503 meanwhile), and a line when the dashboard answers again. An open
    rq-dashboard page wrote a warning every 2.5 s for as long as Redis was down, as RQ's
    reconnect errors did in the worker (jobs.worker.OutageLines)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: float | None = None
        self.said, self.left_out = 0.0, 0

    def failed(self, what: str, reason: str) -> None:
        now = time.monotonic()
        with self.lock:
            if self.since is None:
                self.since, self.said, self.left_out = now, now, 0
                args = ("%s answered 503: the job queue (Redis) is unavailable (%s)", what,
                        reason)
            elif now - self.said >= OUTAGE_REMINDER_SECONDS:
                args = ("%s answered 503: the job queue (Redis) is still unavailable after "
                        "%.0f s (%s); %d more such requests since it was last said", what,
                        now - self.since, reason, self.left_out)
                self.said, self.left_out = now, 0
            else:
                self.left_out += 1
                return
        log.warning(*args)

    def answered(self) -> None:
        if self.since is None:  # (no lock: the usual case, read at each dashboard request)
            return
        with self.lock:
            if self.since is None:
                return
            lasted, self.since = time.monotonic() - self.since, None
        log.info("the job queue (Redis) answers again (unavailable for %.0f s)", lasted)


def _dashboard_answered(response: Response) -> Response:
    """after_request: a dashboard request answered with a success has read Redis (each of
    its pages and data does; not its static files, nor a 401 or 403 refused before it ran),
    so an outage said is over."""
    if (request.blueprint == "rq_dashboard" and request.endpoint != "rq_dashboard.static"
            and response.status_code < 400):
        current_app.extensions[QUEUE_OUTAGE].answered()
    return response


def init_app(app: Flask) -> None:
    """After rq-dashboard's blueprint is registered: views of its replaced by ours."""
    from rq_dashboard.web import jsonify

    app.view_functions[JOB_INFO] = jsonify(job_info)
    app.view_functions[COMPACT] = jsonify(compact_queue)
    app.view_functions[OVERVIEW] = queues_overview
    app.register_error_handler(NoSuchJobError, no_such_job)
    app.extensions[QUEUE_OUTAGE] = QueueOutage()
    app.after_request(_dashboard_answered)
