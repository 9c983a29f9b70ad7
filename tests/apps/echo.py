"""Records every request it receives as one JSON line in $ECHO_LOG, then answers 200.

Used by the request-corpus test: whatever reaches an app is in the log, exactly as the app saw
it (method, path, query, headers, body), so the test can tell what got through and how.
"""
import json
import os

LOG = os.environ["ECHO_LOG"]


def application(environ, start_response):
    body = environ["wsgi.input"].read()
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            headers[key] = value
    entry = {
        "method": environ["REQUEST_METHOD"],
        "path": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        "query": environ.get("QUERY_STRING", ""),
        "protocol": environ.get("SERVER_PROTOCOL", ""),
        "scheme": environ["wsgi.url_scheme"],
        "remote_addr": environ.get("REMOTE_ADDR", ""),
        "headers": headers,
        "body": body.decode("latin-1"),
    }
    with open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
