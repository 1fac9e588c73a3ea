"""The vidpipe Flask application factory."""

from __future__ import annotations

from flask import Flask, Response

from webapp import config
from webapp.config import PROJECT_ROOT, Settings, configure_logging
from webapp.services import webhooks
from webapp.uploads import UploadRequest


class VidpipeFlask(Flask):
    """Flask, answering its automatic OPTIONS (every route's, an API client's or a CORS
    preflight's) with 204 and the route's methods in Allow, sorted. Flask's answer was a
    200 with an empty text/html body, which a JSON client cannot parse, and its Allow in
    the order of a set, which differs between processes."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        response.headers.remove("Content-Type")  # no content, so no type (RFC 9110 15.3.5)
        response.headers["Allow"] = ", ".join(sorted(response.allow))
        return response


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; tests pass their own Settings, everyone else gets the environment's."""
    try:
        settings = settings or Settings.from_env()
        settings.validate()  # WHISPER_MODEL, CHINESE_SCRIPT: stop here with a sentence
        if settings.host:  # no unprotected service on the network (README, "Security")
            from webapp.security import check_exposure

            check_exposure(settings.host, settings)
    except Exception as exc:
        _said_to_the_cli(exc)
        raise
    webhooks.configure(settings)  # the ends of runs this process writes are announced
    app = VidpipeFlask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
        instance_path=str(config.INSTANCE_DIR),  # PROJECT_ROOT/instance
    )
    app.request_class = UploadRequest
    # `/api/v1//videos` is a 404 naming the path, not werkzeug's 308 to `/api/v1/videos`
    # with an HTML body: a client that follows it sends its upload (up to 2 GiB) again.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # Uploads stream to disk; keep werkzeug from buffering big form parts in memory.
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    configure_logging()

    # (ui_library, ui_video and ui_search add their pages to ui.bp when imported)
    from webapp import (  # noqa: F401
        api,
        commands,
        extensions,
        health,
        internal,
        security,
        ui,
        ui_library,
        ui_search,
        ui_video,
    )

    extensions.init_app(app, settings)
    api.init_app(app)
    commands.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)
    app.register_blueprint(internal.bp)  # workers on other hosts; not in the OpenAPI document
    init_dashboard(app, settings)
    security.init_app(app, settings)  # last: it finds the /api and /rq blueprints
    from webapp import hosts
    from webapp.fastpoll import ProgressPolls

    app.wsgi_app = ProgressPolls(app.wsgi_app, settings,  # polls of unchanged progress
                                 app.extensions["vidpipe_throttle"])
    # In front of everything: ProxyFix (TRUSTED_PROXIES), then the Host check.
    app.wsgi_app = hosts.front(app.wsgi_app, settings)
    return app


def _said_to_the_cli(exc: Exception) -> None:
    """Under `flask --app webapp <command>` (reindex, routes, --help), a setting that stops
    start-up is the one-line error `Error: vidpipe: …` and exit status 1, as the commands'
    own errors are: Flask printed create_app's traceback, the sentence only at its end.
    Said here and ended with SystemExit: Flask prints the traceback of any Exception raised
    while it lists the app's commands (`--help`, or no command at all), a ClickException
    too, and then goes on to its help with exit status 0."""
    import os
    import sys

    import click

    from webapp.config import ConfigError
    from webapp.security import InsecureExposure

    if (isinstance(exc, ConfigError | InsecureExposure)
            and os.environ.get("FLASK_RUN_FROM_CLI") == "true"  # set by Flask's `flask`
            and click.get_current_context(silent=True) is not None):
        said = click.ClickException(f"vidpipe: {exc}")
        said.show()
        sys.exit(said.exit_code)


def init_dashboard(app: Flask, settings: Settings) -> None:
    """rq-dashboard, mounted at /rq inside this app."""
    import rq_dashboard

    # rq-dashboard 0.9 wants a list of URLs; a plain string makes its data pages fail.
    app.config["RQ_DASHBOARD_REDIS_URL"] = [settings.redis_url]
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    from webapp import dashboard

    dashboard.init_app(app)  # a job's data, with RQ 3's dependency ids
