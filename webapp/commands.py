"""`flask` commands for operators (run as `flask --app webapp <command>`)."""

from __future__ import annotations

import time

import click
from flask import Flask
from flask.cli import with_appcontext

from webapp import extensions as ext
from webapp import startup
from webapp.config import ConfigError
from webapp.services import search


@click.command("reindex")
@with_appcontext
def reindex() -> None:
    """Rebuild the search index from every video's name and published transcript."""
    try:  # a database not migrated, or not answering: a sentence, not a traceback
        unsure = startup.check_database(ext.settings().database_url)
    except ConfigError as exc:
        raise click.ClickException(f"vidpipe: {exc}") from None
    if unsure:
        raise click.ClickException(f"vidpipe: {unsure}")
    started = time.monotonic()
    session = ext.handles().sessions()
    try:
        done = search.rebuild(session, ext.storage())
        size = search.index_size(session)
    finally:
        session.close()
    click.echo(f"indexed {done.videos} videos ({done.segments} transcript segments) in "
               f"{time.monotonic() - started:.1f} s; the index takes {size / 1e6:.1f} MB"
               + (f"; {done.vanished} deleted meanwhile" if done.vanished else ""))


def init_app(app: Flask) -> None:
    app.cli.add_command(reindex)
