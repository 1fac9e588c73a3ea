"""The vidpipe Flask application factory."""

from __future__ import annotations

import logging

from flask import Flask

from webapp.config import PROJECT_ROOT, Settings


def create_app(settings: Settings | None = None) -> Flask:
    """Build the app; tests pass their own Settings, everyone else gets the environment's."""
    settings = settings or Settings.from_env()
    if settings.host:  # no unprotected service on the network (README, "Security")
        from webapp.security import check_exposure

        check_exposure(settings.host, settings)
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
        instance_path=str(PROJECT_ROOT / "instance"),
    )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # Uploads stream to disk; keep werkzeug from buffering big form parts in memory.
    app.config["MAX_FORM_MEMORY_SIZE"] = 1024 * 1024
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from webapp import api, extensions, health, security, ui

    extensions.init_app(app, settings)
    api.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(ui.bp)
    init_dashboard(app, settings)
    security.init_app(app, settings)  # last: it finds the /api and /rq blueprints
    return app


def init_dashboard(app: Flask, settings: Settings) -> None:
    """rq-dashboard, mounted at /rq inside this app."""
    import rq_dashboard

    # rq-dashboard 0.9 wants a list of URLs; a plain string makes its data pages fail.
    app.config["RQ_DASHBOARD_REDIS_URL"] = [settings.redis_url]
    rq_dashboard.web.setup_rq_connection(app)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
