"""Alembic environment: the URL comes from vidpipe's settings (DATABASE_URL)."""

from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy.exc import OperationalError

from webapp.config import ConfigError, Settings, check_database_url, shown_database_url
from webapp.db import get_engine
from webapp.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Made by the migrations in SQL of their own and not described by the models: the search
# index's FTS5 table (SQLite: search_fts and its shadow tables) and its GIN index
# (PostgreSQL). Autogenerate proposed to drop them (`alembic check` failed on a database at
# head, and `alembic revision --autogenerate` wrote a migration that deleted the index).
NOT_IN_MODELS = ("search_fts", "ix_search_entries_terms")


def include_name(name: str | None, type_: str, parent_names: dict) -> bool:
    return not (type_ in ("table", "index") and name is not None
                and name.startswith(NOT_IN_MODELS))


def database_url() -> str:
    """The URL to migrate; a typo in it is alembic's one-line "FAILED: …", not a traceback."""
    url = config.attributes.get("database_url") or Settings.from_env().database_url
    try:
        check_database_url(url)
    except ConfigError as exc:
        raise CommandError(f"vidpipe: {exc}") from None
    return url


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    try:
        connection = get_engine(url).connect()
    except OperationalError as exc:
        said = " ".join(str(exc.orig or exc).split())
        raise CommandError(f"vidpipe: could not open the database at "
                           f"{shown_database_url(url)}: {said}") from None
    with connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, include_name=include_name)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
