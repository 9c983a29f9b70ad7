"""A tiny JSON API served as a module ("notes:application"), mounted at /api.

    GET  /api/notes          list notes
    POST /api/notes          add one (the request body is the note's text)
"""
import json
import platform
import threading

_lock = threading.Lock()
_notes = []


def _json(start_response, status, obj):
    body = json.dumps(obj, indent=2).encode("utf-8") + b"\n"
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if path in ("", "/"):
        return _json(start_response, "200 OK", {
            "app": "notes",
            "python": platform.python_version(),
            "mounted_at": environ["SCRIPT_NAME"],
            "endpoints": ["/notes"],
        })
    if path == "/notes" and method == "GET":
        with _lock:
            return _json(start_response, "200 OK", {"notes": list(_notes)})
    if path == "/notes" and method == "POST":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        text = environ["wsgi.input"].read(min(length, 10000)).decode("utf-8", "replace")
        with _lock:
            _notes.append(text)
            count = len(_notes)
        return _json(start_response, "201 Created", {"added": text, "count": count})
    return _json(start_response, "404 Not Found", {"error": "no such endpoint", "path": path})
