"""A WSGI app for tests of the web worker: `GET /?ms=N` sleeps N ms (a request holding a
thread) and answers the serving process's pid."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    ms = int(parse_qs(environ.get("QUERY_STRING", "")).get("ms", ["0"])[0])
    time.sleep(ms / 1000)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
