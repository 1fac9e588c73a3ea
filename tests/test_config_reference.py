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


@pytest.fixture
def read_settings(monkeypatch) -> dict[str, str]:
    """Every setting the code reads, with the default it falls back to: recorded from
    Settings.from_env, gunicorn.conf.py and the access log, in an environment without any."""
    read: dict[str, str] = {}
    env = config._env
    list_env = config._list_env

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
