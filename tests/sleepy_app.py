"""A WSGI app for tests of the web worker: `GET /?ms=N` sleeps N ms (a request holding a
thread) and answers the serving process's pid; `GET /healthz` (a path the worker treats as
a poll) and `GET /page` answer the name of the thread that served them, padded to
`?bytes=N` bytes when asked; `GET /gc` answers how many objects the garbage collector
leaves alone (gc.get_freeze_count)."""

from __future__ import annotations

import gc
import os
import threading
import time
from urllib.parse import parse_qs


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/gc":
        body = str(gc.get_freeze_count()).encode()
    elif environ.get("PATH_INFO") in ("/healthz", "/page"):
        body = threading.current_thread().name.encode()
        body = body.ljust(int(query.get("bytes", ["0"])[0]), b" ")
    else:
        time.sleep(int(query.get("ms", ["0"])[0]) / 1000)
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
