"""README's "Configuration" table is the reference operators set vidpipe up from: it lists
every setting the code reads from the environment, with its true default, and nothing the
code does not read."""

from __future__ import annotations

import os
import re
import runpy

import pytest

from webapp import accesslog, config
from webapp.config import PROJECT_ROOT, Settings

# Defaults the table says in words: the value each stands for.
IN_WORDS = {
    "HOST": ("`127.0.0.1`", ""),  # Settings keeps "" (unset); gunicorn.conf.py listens there
    "WEB_WORKERS": ("2 per CPU core, at most 8", None),  # checked against the cores below
    "SECRET_KEY": ("generated into `instance/secret_key`", ""),
    "WORKER_NAME": ("the host name", ""),
}


def documented() -> dict[str, str]:
    """Each setting of README's table, and its default as the table says it."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for line in section.splitlines():
        row = re.match(r"\| ((?:`[A-Z_]+`(?:, )?)+) \| ([^|]*) \|", line)
        if row is None:
            continue
        names = re.findall(r"`([A-Z_]+)`", row[1])
        default = row[2].strip()
        if len(names) > 1:  # `WEIGHT_…`, … | `10`, `50`, … : one default each
            defaults = re.findall(r"`([^`]*)`", default)
            assert len(defaults) == len(names), line
            table.update((name, f"`{value}`") for name, value in zip(names, defaults,
                                                                       strict=True))
        else:
            assert names[0] not in table, f"{names[0]} is in the table twice"
            table[names[0]] = default
    return table


def rows() -> dict[str, str]:
    """Each setting of README's table, and its whole row."""
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        row = re.match(r"\| ((?:`[A-Z_]+`(?:, )?)+) \|", line)
        if row is not None:
            found.update((name, line) for name in re.findall(r"`([A-Z_]+)`", row[1]))
    return found


# What each number setting must be (config.number_rule: the words of its refusal), as the
# read_settings fixture records it.
NUMBER_RULES: dict[str, str] = {}


@pytest.fixture
def read_settings(monkeypatch) -> dict[str, str]:
    """Every setting the code reads, with the default it falls back to: recorded from
    Settings.from_env, gunicorn.conf.py and the access log, in an environment without any.
    What each number setting must be is recorded in NUMBER_RULES."""
    read: dict[str, str] = {}
    env = config._env
    list_env = config._list_env
    number_env = config.number_env

    def recording_number_env(name: str, default: float, kind: type = int, **rule):
        NUMBER_RULES[name] = config.number_rule(kind, **rule)
        return number_env(name, default, kind, **rule)

    def recording_env(name: str, default: str) -> str:
        read.setdefault(name, default)
        return env(name, default)

    def recording_list_env(name: str) -> tuple[str, ...]:
        read.setdefault(name, "")
        return list_env(name)

    for name in [*documented(), "WORKERS"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "_env", recording_env)
    monkeypatch.setattr(config, "_list_env", recording_list_env)
    monkeypatch.setattr(config, "number_env", recording_number_env)  # gunicorn.conf.py's
    monkeypatch.setattr(accesslog, "number_env", recording_number_env)
    NUMBER_RULES.clear()
    Settings.from_env()
    gunicorn = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    accesslog.poll_log_seconds(), accesslog.slow_request_ms()
    assert gunicorn["bind"] == ["127.0.0.1:5000"]  # HOST's and PORT's defaults
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    read["WORKERS"] = re.search(r"^WORKERS \?= (\S+)$", makefile, re.MULTILINE)[1]
    return read


def test_the_readme_lists_every_setting_read_and_no_other(read_settings):
    table = documented()
    assert sorted(set(read_settings) - set(table)) == [], "read but not in the README"
    assert sorted(set(table) - set(read_settings)) == [], "in the README but never read"


def test_the_readme_gives_each_settings_true_default(read_settings):
    wrong = {}
    for name, said in documented().items():
        true = read_settings[name]
        if name in IN_WORDS:
            words, value = IN_WORDS[name]
            if not said.startswith(words) or (value is not None and true != value):
                wrong[name] = (said, true)
            continue
        if name == "DATABASE_URL":  # "" in from_env; Settings makes it under instance/
            true = f"sqlite:///{os.path.relpath(Settings().database_url[10:], PROJECT_ROOT)}"
        if name == "MEDIA_ROOT":
            true = os.path.relpath(true, PROJECT_ROOT)
        if true == "":
            if not said.startswith("unset"):
                wrong[name] = (said, "unset")
            continue
        shown = re.match(r"`([^`]*)`", said)
        value = shown[1] if shown else said
        try:
            same = float(value) == float(true)
        except ValueError:
            same = value == true
        if not same:
            wrong[name] = (said, true)
    assert wrong == {}, "README default (said, true)"
    cores = len(os.sched_getaffinity(0))
    assert runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))["workers"] == min(2 * cores, 8)


def test_the_readme_says_what_each_number_setting_must_be(read_settings):
    """A number outside its range stops start-up "with a sentence naming it and what it must
    be" (README): the table says the same words beforehand. SLOW_REQUEST_MS=0 (to log every
    request) or PROGRESS_INTERVAL=-1 stopped start-up while the table gave no range at all."""
    table = rows()
    assert len(NUMBER_RULES) > 20  # every number setting was recorded
    unsaid = {name: rule for name, rule in NUMBER_RULES.items() if rule not in table[name]}
    assert unsaid == {}, "README rows that do not say what the setting must be"


# Environment variables the code reads that are no setting of vidpipe's: set by the `flask`
# command and by gunicorn/systemd when they hand over listening sockets.
NOT_SETTINGS = {"FLASK_RUN_FROM_CLI", "GUNICORN_FD", "LISTEN_FDS"}
# os.environ.get("X"), os.environ["X"], (os.)getenv("X"), and vidpipe's readers _env("X", …),
# number_env("X", …), bool_env("X"), _list_env("X").
ENV_READ = re.compile(r"(?:os\.environ\.get|os\.environ\.setdefault|os\.environ\[|\bgetenv|"
                      r"\b_env|\bnumber_env|\bbool_env|\b_list_env)\(?\s*[\"']([A-Z][A-Z0-9_]*)[\"']")


def test_every_variable_the_code_reads_is_in_the_readme():
    """The recording above sees what Settings.from_env, gunicorn.conf.py and the access log
    read; this sees every read anywhere in the code the service runs (a worker's, a
    migration's), so a setting read directly from os.environ is not missed."""
    sources = [PROJECT_ROOT / "gunicorn.conf.py", PROJECT_ROOT / "wsgi.py"]
    for folder in ("webapp", "jobs", "migrations"):
        sources += sorted((PROJECT_ROOT / folder).rglob("*.py"))
    read = {name: path.relative_to(PROJECT_ROOT).as_posix()
            for path in sources for name in ENV_READ.findall(path.read_text(encoding="utf-8"))}
    assert {"HOST", "DATABASE_URL", "LOG_LEVEL", "POLL_LOG_SECONDS"} <= set(read)  # it sees
    undocumented = {name: where for name, where in read.items()
                    if name not in documented() and name not in NOT_SETTINGS}
    assert undocumented == {}, "read by the code (where) but not in README's table"
