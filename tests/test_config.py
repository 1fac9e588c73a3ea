"""Number settings: a value that is not a number, or out of its range, stops the web process
and the worker at start-up with one sentence naming the setting (README, "Configuration"),
not with a traceback, and not later at the first job that reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from webapp.config import PROJECT_ROOT, ConfigError, Settings

BAD = [
    ("TRANSCODE_NICE", "20", "a whole number from 0 to 19"),
    ("WEIGHT_TRANSCODE", "0", "a number above 0"),
    ("WEIGHT_TRANSCRIBE", "nan", "a number above 0"),
    ("PROBE_TIMEOUT", "abc", "a number above 0"),
    ("TRUSTED_PROXIES", "-1", "a whole number of at least 0"),
    ("MAX_UPLOAD_BYTES", "2G", "a whole number above 0"),
    ("STEP_RETRIES", "1.5", "a whole number of at least 0"),
    ("HEARTBEAT_INTERVAL", "0", "a whole number above 0"),
    ("RECONCILE_INTERVAL", "inf", "a number of at least 0"),
]


@pytest.mark.parametrize(("name", "value", "rule"), BAD)
def test_a_bad_number_is_a_sentence_naming_the_setting(monkeypatch, name, value, rule):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(caught.value) == f"{name} must be {rule}; got {value!r}."


def test_good_numbers_are_read(monkeypatch):
    for name, value in {"TRANSCODE_NICE": "0", "WEIGHT_TRANSCODE": "2.5", "PROBE_TIMEOUT": "3",
                        "STEP_RETRIES": " 0 ", "PROGRESS_INTERVAL": "0"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert (settings.transcode_nice, settings.weights["transcode"], settings.probe_timeout,
            settings.step_retries, settings.progress_interval) == (0, 2.5, 3.0, 0, 0.0)


def _start(command: list[str], tmp_path: Path, env: dict[str, str]):
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **env,
                                            "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"})


@pytest.mark.parametrize(("name", "value", "says"), [
    *((name, value, f"{name} must be {rule}; got {value!r}.") for name, value, rule in (
        BAD[0], BAD[3], ("WEB_WORKERS", "abc", "a whole number above 0"),
        ("WEB_THREADS", "0", "a whole number above 0"))),
    ("CORS_ORIGINS", "*", "CORS_ORIGINS: '*' is not an origin"),
    ("ALLOWED_HOSTS", "videos.example.com:443",
     "ALLOWED_HOSTS: 'videos.example.com:443' has a port"),
])
def test_the_web_master_stops_with_the_sentence_before_it_binds(tmp_path, name, value, says):
    done = _start([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
                   "127.0.0.1:0", "wsgi:app"], tmp_path, {name: value})
    assert done.returncode != 0
    assert f"vidpipe: {says}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


@pytest.mark.parametrize(("name", "value", "rule"), [BAD[1], BAD[5]])
def test_the_worker_stops_with_the_sentence(tmp_path, name, value, rule):
    done = _start([sys.executable, "-m", "jobs.worker", "--burst"], tmp_path, {name: value})
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"vidpipe: {name} must be {rule}; got {value!r}." in done.stderr
    assert "Traceback" not in done.stderr

