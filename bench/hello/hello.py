"""The bare Flask app bench/polling.py compares vidpipe's progress polls with, as the issue
measured it: one route returning {"ok": 1}, started as `gunicorn -w 2 hello:app` from this
folder (sync workers, gunicorn's defaults, no access log)."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return {"ok": 1}
