# A mod_wsgi-style script: wsgimux loads this file and serves its `application`.
import sys
import platform


def application(environ, start_response):
    body = (
        "Hello from wsgimux!\n"
        "\n"
        "python:      %s %s (%s)\n"
        "SCRIPT_NAME: %r\n"
        "PATH_INFO:   %r\n"
        "\n"
        "Try /api/notes for the JSON example app.\n"
        % (
            platform.python_implementation(),
            platform.python_version(),
            sys.executable,
            environ.get("SCRIPT_NAME"),
            environ.get("PATH_INFO"),
        )
    ).encode("utf-8")
    start_response(
        "200 OK",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
    )
    return [body]
