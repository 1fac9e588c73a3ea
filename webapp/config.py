"""Settings read from the environment, with documented defaults (see README, "Configuration")."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INSTANCE_DIR = PROJECT_ROOT / "instance"

STEPS = ("extract_audio", "transcribe", "thumbnails", "transcode")
CHINESE_SCRIPTS = ("simplified", "traditional")
DEFAULT_WEIGHTS = {"extract_audio": 10.0, "transcribe": 50.0, "thumbnails": 10.0, "transcode": 30.0}
# Where every route of the JSON API lives (its errors are JSON, its access is API_TOKEN's).
API_PREFIX = "/api"
# One log line format for the web process, the workers and their reconcilers.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The shortest secret accepted (README, "Security"): the tokens are for programs, which
# hold a long random one as easily as a short one; the password is typed by a person.
# SECRET_KEY signs the session cookie: anyone who got one cookie can guess at the key
# offline, as fast as their hardware goes and unthrottled, so it needs more than the
# tokens, which are only guessed at through the server (AUTH_FAILURE_LIMIT).
SECRET_MINIMUMS = (("API_TOKEN", "api_token", 16), ("WORKER_TOKEN", "worker_token", 16),
                   ("ADMIN_PASSWORD", "admin_password", 8),
                   ("WEBHOOK_SECRET", "webhook_secret", 16),
                   ("SECRET_KEY", "secret_key", 32))
# WORKER_NAME's most characters: the steps' `worker` column (webapp/models.py).
WORKER_NAME_LIMIT = 200
MAKE_A_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level() -> str:
    """LOG_LEVEL, INFO when unset; one not in LOG_LEVELS is INFO here (Settings.from_env
    refuses it with a sentence, the first thing each process does after this)."""
    level = _env("LOG_LEVEL", "INFO").strip().upper()
    return level if level in LOG_LEVELS else "INFO"


def rq_log_level() -> str:
    """RQ's own loggers: WARNING (ERROR with LOG_LEVEL=ERROR), unless LOG_LEVEL=DEBUG. At
    INFO RQ wrote four lines per step (its description, "Successfully completed … job in
    …", "Job OK", "result is kept for 86400 seconds") and five at each start, beside
    vidpipe's own lines for each step's start and end (jobs.runner): an operator read the
    same step five times over."""
    level = log_level()
    return level if level in ("DEBUG", "ERROR") else "WARNING"


def configure_logging() -> None:
    """LOG_LEVEL (INFO) and up to stderr in LOG_FORMAT (what honcho, systemd and docker
    collect); RQ's own lines at rq_log_level(), redis-py's at INFO and up."""
    logging.basicConfig(level=log_level(), format=LOG_FORMAT)
    logging.getLogger("rq").setLevel(rq_log_level())
    # redis-py's DEBUG lines are about its own handshakes: "Failed to enable maintenance
    # notifications: unknown subcommand 'MAINT_NOTIFICATIONS'" at every new connection to a
    # Redis before 8 (22 in a minute's run), read as a fault by operators chasing one.
    logging.getLogger("redis").setLevel(max(logging.INFO, logging.getLevelName(log_level())))


class ConfigError(ValueError):
    """A setting that would keep vidpipe from working: one sentence saying what to set."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value == "" else value


def _list_env(name: str) -> tuple[str, ...]:
    """A list setting: items separated by commas and/or white space."""
    return tuple(item for item in re.split(r"[,\s]+", os.environ.get(name, "")) if item)


def bool_env(name: str, default: bool = False) -> bool:
    """A yes/no setting: 1/true/yes/on or 0/false/no/off (any case). Anything else is a
    ConfigError: ALLOW_INSECURE=ture was taken for "no" without a word, and the refusal
    that followed named the setting as if it were unset."""
    raw = _env(name, "1" if default else "0").strip()
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 (or true, yes, on) or 0 (or false, no, off); "
                      f"got {raw!r}.")


def number_env(name: str, default: float, kind: type[int] | type[float] = int, *,
               minimum: float | None = None, maximum: float | None = None,
               positive: bool = False) -> Any:
    """A number setting, or ConfigError with a sentence naming it and what it must be: a
    typo stops start-up there, not with a traceback or at the first job that reads it."""
    raw = _env(name, str(default)).strip()
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if (value is not None and math.isfinite(value)
            and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)
            and (not positive or value > 0)):
        return value
    raise ConfigError(f"{name} must be {number_rule(kind, minimum, maximum, positive)}; "
                      f"got {raw!r}.")


def number_rule(kind: type[int] | type[float] = int, minimum: float | None = None,
                maximum: float | None = None, positive: bool = False) -> str:
    """What a number setting must be, in the words of its refusal and of README's
    "Configuration" table: "a whole number from 0 to 19"."""
    what = "a whole number" if kind is int else "a number"
    if positive:
        what += " above 0"
    elif minimum is not None and maximum is not None:
        what += f" from {minimum:g} to {maximum:g}"
    elif minimum is not None:
        what += f" of at least {minimum:g}"
    return what


DATABASE_EXAMPLES = ("postgresql+psycopg://user:password@host/vidpipe or "
                     "sqlite:////var/lib/vidpipe/vidpipe.db")


def shown_database_url(url: str) -> str:
    """DATABASE_URL as a sentence may show it: without its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def check_database_url(url: str) -> None:
    """ConfigError unless `url` names a SQLite file or a PostgreSQL database whose driver is
    installed. A typo (`postgres://`, a bare path) failed every web worker's boot with a
    traceback, and a worker started, took jobs and burnt their retries on the same error."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = shown_database_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"DATABASE_URL must be a database URL such as {DATABASE_EXAMPLES}; "
                          f"got {shown!r}.") from None
    unusable = ConfigError(f"DATABASE_URL must name a PostgreSQL or SQLite database, such as "
                           f"{DATABASE_EXAMPLES}; got {shown!r}.")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        if parsed.drivername == "postgres":
            raise ConfigError(f"DATABASE_URL must begin postgresql+psycopg:// (SQLAlchemy "
                              f"does not know postgres://); got {shown!r}.") from None
        raise unusable from None
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise unusable
    try:
        if getattr(dialect, "is_async", False):
            raise ImportError("an asyncio driver")
        dialect.import_dbapi()
    except ImportError as exc:
        raise ConfigError(f"DATABASE_URL's driver {parsed.drivername!r} cannot be used here "
                          f"({exc}): write postgresql+psycopg://, whose driver vidpipe "
                          f"installs; got {shown!r}.") from None
    check_sqlite_folder(url)


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite DATABASE_URL names; None for another database, or one in memory."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database
    if (parsed.get_backend_name() != "sqlite" or not database or database == ":memory:"
            or database.startswith("file:")):
        return None
    return Path(database)


def check_sqlite_folder(url: str) -> None:
    """ConfigError when the folder of DATABASE_URL's SQLite file does not exist, save the
    default's (instance/, made on first use). A typo in the path made the folder and an
    empty database there, which `make migrate` then filled: the service ran on a new, empty
    database beside the one it should have used."""
    path = sqlite_file(url)
    if path is None:
        return
    if not path.parent.exists() and path.parent.resolve() != INSTANCE_DIR:
        raise ConfigError(f"DATABASE_URL's SQLite database {path} is in a folder that does "
                          f"not exist ({path.parent}): make the folder, or correct the path "
                          f"in DATABASE_URL.")


def check_redis_url(url: str) -> None:
    """ConfigError unless redis-py can use `url`: a typo (`127.0.0.1:6379`, `http://…`)
    stopped the web process and the workers with redis-py's traceback."""
    from urllib.parse import unquote, urlsplit

    from redis.connection import parse_url

    shown = shown_database_url(url)  # without its password, the same way
    try:
        parsed = parse_url(url)
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL must be a Redis URL such as redis://127.0.0.1:6379/0 "
                          f"(redis://:PASSWORD@host:port/db with a password, rediss:// over "
                          f"TLS, unix:///path/to/redis.sock): {exc}; got {shown!r}.") from None
    # redis-py passes over a database number it cannot read (`/1O`, `/abc`) and uses
    # database 0: the queue was then shared, without a word, with whatever else uses it.
    path = unquote(urlsplit(url).path).strip("/")
    if (not url.lower().startswith("unix://") and path
            and not (isinstance(parsed.get("db"), int) and parsed["db"] >= 0)):
        raise ConfigError(f"REDIS_URL's database (after the port) must be a whole number of "
                          f"at least 0, such as redis://127.0.0.1:6379/0; got {shown!r}.")


def _weights_from_env() -> dict[str, float]:
    return {step: number_env(f"WEIGHT_{step.upper()}", DEFAULT_WEIGHTS[step], float,
                             positive=True)
            for step in STEPS}


@dataclass
class Settings:
    """Everything the web process and the workers need; both read it the same way."""

    database_url: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    queue_name: str = "vidpipe"
    media_root: Path = INSTANCE_DIR / "media"
    max_upload_bytes: int = 2 * 1024**3
    whisper_model: str = "base"  # whisper_models.DEFAULT
    chinese_script: str = "simplified"
    whisper_threads: int = 0
    ffmpeg_threads: int = 0
    transcode_nice: int = 10  # the preview encode's CPU priority below the other steps'
    probe_timeout: float = 10.0  # seconds an upload's checks (ffprobe) may take
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    progress_interval: float = 0.5
    job_timeout_base: int = 300
    job_timeout_per_second: float = 10.0
    step_retries: int = 2
    heartbeat_interval: int = 5
    heartbeat_grace: int = 30
    reconcile_interval: float = 5.0
    # The web process (README, "Security"). host is HOST as configured, "" when unset (the
    # Procfile/gunicorn.conf.py then listen on 127.0.0.1). Secrets stay out of repr().
    host: str = ""
    api_token: str = field(default="", repr=False)
    admin_password: str = field(default="", repr=False)
    allow_insecure: bool = False
    secret_key: str = field(default="", repr=False)
    # Who may reach it (README, "Security"): Host names answered besides the loopback ones,
    # origins whose pages may use the API, and how many proxies in front to believe.
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    trusted_proxies: int = 0
    # Wrong credentials (webapp/throttle.py): after this many from one address (0: no limit)
    # within the window (seconds), requests from it that send credentials get 429 until the
    # window ends.
    auth_failure_limit: int = 20
    auth_failure_window: int = 300
    # Workers on other hosts (docs/DEPLOY.md): a worker with SERVER_URL exchanges media with
    # the web app over HTTP (webapp/internal.py) instead of reading MEDIA_ROOT, keeping at
    # most WORKER_CACHE_BYTES of downloads in its own MEDIA_ROOT/cache. WORKER_TOKEN is the
    # secret both sides share. WORKER_NAME is recorded per step (default: the host name).
    server_url: str = ""
    worker_token: str = field(default="", repr=False)
    worker_cache_bytes: int = 5 * 1024**3
    worker_name: str = ""
    # Webhooks (webapp/services/webhooks.py): the end of every run is posted to WEBHOOK_URL,
    # signed with WEBHOOK_SECRET, by the workers.
    webhook_url: str = ""
    webhook_secret: str = field(default="", repr=False)
    log_level: str = "INFO"  # LOG_LEVEL: what configure_logging() applies

    def __post_init__(self) -> None:
        if not self.database_url:
            self.database_url = f"sqlite:///{INSTANCE_DIR / 'vidpipe.db'}"
        self.media_root = Path(self.media_root)
        self.server_url = self.server_url.rstrip("/")
        if not self.worker_name:
            self.worker_name = socket.gethostname()
        if len(self.worker_name) > WORKER_NAME_LIMIT:  # it was cut there without a word
            raise ConfigError(f"WORKER_NAME must be at most {WORKER_NAME_LIMIT} characters (it "
                              f"is recorded with each step); got {len(self.worker_name)}.")
        if not 0 <= self.transcode_nice <= 19:
            raise ConfigError(f"TRANSCODE_NICE must be 0 to 19, got {self.transcode_nice}")
        if self.trusted_proxies < 0:
            raise ConfigError(f"TRUSTED_PROXIES must be 0 or more, got {self.trusted_proxies}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Build settings from environment variables; keyword arguments win."""
        values: dict[str, Any] = {
            "database_url": _env("DATABASE_URL", ""),
            "redis_url": _env("REDIS_URL", cls.redis_url),
            "queue_name": _env("QUEUE_NAME", cls.queue_name),
            "media_root": Path(_env("MEDIA_ROOT", str(INSTANCE_DIR / "media"))),
            "max_upload_bytes": number_env("MAX_UPLOAD_BYTES", cls.max_upload_bytes, positive=True),
            "whisper_model": _env("WHISPER_MODEL", cls.whisper_model).strip(),
            "chinese_script": _env("CHINESE_SCRIPT", cls.chinese_script).strip().lower(),
            "whisper_threads": number_env("WHISPER_THREADS", 0, minimum=0),
            "ffmpeg_threads": number_env("FFMPEG_THREADS", 0, minimum=0),
            "transcode_nice": number_env("TRANSCODE_NICE", cls.transcode_nice, minimum=0,
                                         maximum=19),
            "probe_timeout": number_env("PROBE_TIMEOUT", cls.probe_timeout, float, positive=True),
            "weights": _weights_from_env(),
            "progress_interval": number_env("PROGRESS_INTERVAL", cls.progress_interval, float,
                                            minimum=0),
            "job_timeout_base": number_env("JOB_TIMEOUT_BASE", cls.job_timeout_base, positive=True),
            "job_timeout_per_second": number_env("JOB_TIMEOUT_PER_SECOND",
                                                 cls.job_timeout_per_second, float, minimum=0),
            "step_retries": number_env("STEP_RETRIES", cls.step_retries, minimum=0),
            "heartbeat_interval": number_env("HEARTBEAT_INTERVAL", cls.heartbeat_interval,
                                             positive=True),
            "heartbeat_grace": number_env("HEARTBEAT_GRACE", cls.heartbeat_grace, minimum=0),
            "reconcile_interval": number_env("RECONCILE_INTERVAL", cls.reconcile_interval,
                                             float, minimum=0),
            "host": _env("HOST", "").strip(),
            "api_token": _env("API_TOKEN", ""),
            "admin_password": _env("ADMIN_PASSWORD", ""),
            "allow_insecure": bool_env("ALLOW_INSECURE"),
            "secret_key": _env("SECRET_KEY", ""),
            "allowed_hosts": _list_env("ALLOWED_HOSTS"),
            "cors_origins": _list_env("CORS_ORIGINS"),
            "trusted_proxies": number_env("TRUSTED_PROXIES", 0, minimum=0),
            "auth_failure_limit": number_env("AUTH_FAILURE_LIMIT", cls.auth_failure_limit,
                                             minimum=0),
            "auth_failure_window": number_env("AUTH_FAILURE_WINDOW", cls.auth_failure_window,
                                              positive=True),
            "server_url": _env("SERVER_URL", "").strip(),
            "worker_token": _env("WORKER_TOKEN", ""),
            "worker_cache_bytes": number_env("WORKER_CACHE_BYTES", cls.worker_cache_bytes,
                                             positive=True),
            "worker_name": _env("WORKER_NAME", "").strip(),
            "webhook_url": _env("WEBHOOK_URL", "").strip(),
            "webhook_secret": _env("WEBHOOK_SECRET", ""),
            "log_level": _env("LOG_LEVEL", cls.log_level).strip().upper(),
        }
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        """ConfigError unless DATABASE_URL and the speech settings name something usable;
        the web process and the workers call it at start-up, so a typo stops them with a
        sentence instead of failing every request or transcription later."""
        from webapp.services import whisper_models

        check_database_url(self.database_url)
        check_redis_url(self.redis_url)
        try:
            whisper_models.model_dir(self.whisper_model)
        except whisper_models.ModelError as exc:
            raise ConfigError(str(exc)) from None
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO (the default), WARNING or "
                              f"ERROR; got {self.log_level!r}.")
        if self.chinese_script not in CHINESE_SCRIPTS:
            raise ConfigError(f"CHINESE_SCRIPT must be 'simplified' (the default) or "
                              f"'traditional'; got {self.chinese_script!r}.")
        from webapp.hosts import normalize_host
        from webapp.origins import configured_origins

        try:  # checked again where they are used; here so that a bad one stops start-up
            configured_origins(self.cors_origins)
            for entry in self.allowed_hosts:
                normalize_host(entry)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.validate_secrets()
        self.validate_webhook()
        if self.worker_token and self.worker_token == self.api_token:
            raise ConfigError("WORKER_TOKEN must differ from API_TOKEN: API clients must not "
                              "be able to write the outputs of steps.")

    def validate_secrets(self) -> None:
        """ConfigError for a secret too short to withstand guessing; an unset one is fine
        (it leaves its part open, or closed: README, "Security")."""
        for name, attribute, minimum in SECRET_MINIMUMS:
            length = len(getattr(self, attribute))
            if 0 < length < minimum:
                raise ConfigError(
                    f"{name} is {length} characters long, too short to withstand guessing: "
                    f"it must have at least {minimum}. Make a good one with "
                    f"{MAKE_A_SECRET} and set the same on every host that uses it.")

    def validate_webhook(self) -> None:
        """ConfigError unless WEBHOOK_URL, when set, is an http(s) address with a host and
        comes with WEBHOOK_SECRET (receivers must be able to tell vidpipe's posts)."""
        if not self.webhook_url:
            if self.webhook_secret:
                raise ConfigError("WEBHOOK_SECRET is set but WEBHOOK_URL is not: set the "
                                  "address to post the ends of runs to, or unset the secret.")
            return
        if not re.match(r"^https?://[^/?#\s]+", self.webhook_url):
            raise ConfigError(f"WEBHOOK_URL must be an http:// or https:// address, e.g. "
                              f"https://example.com/hooks/vidpipe; got {self.webhook_url!r}.")
        if not self.webhook_secret:
            raise ConfigError(f"WEBHOOK_URL needs WEBHOOK_SECRET, the key its posts are signed "
                              f"with, so that the receiver can tell them from anyone else's: "
                              f"make one with {MAKE_A_SECRET}.")

    def validate_remote_worker(self) -> None:
        """ConfigError unless a worker with SERVER_URL can work: it needs the token, and a
        database the web host shares (SQLite is a file on one host)."""
        if not self.server_url:
            return
        if not re.match(r"^https?://[^/]+", self.server_url):
            raise ConfigError(f"SERVER_URL must be the web app's http:// or https:// address, "
                              f"e.g. http://web-host:5000; got {self.server_url!r}.")
        if self.database_url.startswith("sqlite"):
            raise ConfigError("A worker with SERVER_URL needs the PostgreSQL database that "
                              "the web app uses (set DATABASE_URL to it): SQLite is a file "
                              "on the web host, which a worker on another host cannot share.")
        if not self.worker_token:
            raise ConfigError("A worker with SERVER_URL needs WORKER_TOKEN, the same token "
                              "as the web app's.")
        if self.worker_cache_bytes <= 0:
            raise ConfigError(f"WORKER_CACHE_BYTES must be > 0, got {self.worker_cache_bytes}.")
