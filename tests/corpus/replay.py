"""Replays gunicorn's HTTP request corpus (tests/requests/{valid,invalid} of its sdist, fetched
at test time) through a running wsgimux whose only app is tests/apps/echo.py.

- invalid: every case must be answered 4xx or closed, and nothing may reach the app;
- valid: every case must reach the app as the same request (method, path, query, headers,
  body), except where one of wsgimux's stated rules is stricter than gunicorn (CONNECT, HTTP/1.1
  without Host, transfer codings other than chunked, userinfo in an absolute target) or answers
  itself (OPTIONS *); those are
  derived from the expected request, not listed by name, and must get their stated status.

Cases whose expectation depends on a gunicorn setting other than the default are run only when
wsgimux has the same behaviour (forwarded_allow_ips: sent from a trusted address); the others
are reported as not applicable. Prints one line per case; exits 1 if any case failed.

usage: replay.py SDIST_DIR HOST:PORT ECHO_LOG TRUSTED_SOURCE_IP
"""
import json
import os
import socket
import sys
import time
from urllib.parse import unquote_to_bytes

SDIST, ADDR, LOG, TRUSTED = sys.argv[1:5]
HOST, PORT = ADDR.rsplit(":", 1)
PORT = int(PORT)
TESTS = os.path.join(SDIST, "tests")
sys.path[:0] = [SDIST, TESTS]

import treq  # noqa: E402  (gunicorn's own corpus loader, from the sdist)
from gunicorn.config import Config  # noqa: E402

DEFAULTS = {k: s.get() for k, s in Config().settings.items()}
# Headers that describe one hop or that wsgimux itself sets for the child.
NOT_COMPARED = {
    "CONNECTION", "KEEP-ALIVE", "PROXY-CONNECTION", "TE", "TRAILER", "TRANSFER-ENCODING",
    "UPGRADE", "EXPECT", "CONTENT-LENGTH", "FORWARDED", "X-FORWARDED-FOR",
    "X-FORWARDED-PROTO", "X-FORWARDED-HOST", "SCRIPT_NAME",
}
# Set per hop: wsgimux re-frames the body for the child (one Content-Length, or chunked).
SET_BY_FRONT = {"HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST",
                "CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"}


def changed_settings(cfg):
    return sorted(k for k, s in cfg.settings.items()
                  if k != "http_parser" and s.get() != DEFAULTS.get(k))


def log_entries():
    try:
        with open(LOG) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def exchange(data, source=None, limit=5.0):
    """Sends `data`, half-closes, reads until the server closes: the statuses answered."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(limit)
    if source:
        s.bind((source, 0))
    s.connect((HOST, PORT))
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = b""
    deadline = time.time() + limit
    try:
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        else:
            return None, "server neither answered nor closed within %ss" % limit
    except socket.timeout:
        return None, "server neither answered nor closed within %ss" % limit
    except ConnectionResetError:
        pass
    finally:
        s.close()
    return parse_statuses(got), None


def parse_statuses(raw):
    statuses = []
    while raw:
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            break
        head = raw[:end].split(b"\r\n")
        statuses.append(int(head[0].split(b" ")[1]))
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        raw = raw[end + 4 + length:]
    return statuses


def stricter_rule(exp):
    """The status wsgimux answers itself for a request gunicorn accepts, and why; None when the
    request must reach the app."""
    names = [n.upper() for n, _ in exp["headers"]]
    if exp["method"] == "CONNECT":
        return 400, "CONNECT is refused"
    if exp["uri"]["raw"] == "*":
        return 200, "OPTIONS * is answered by wsgimux"
    if exp["version"] == (1, 1) and "HOST" not in names:
        return 400, "HTTP/1.1 without Host is refused"
    raw = exp["uri"]["raw"]
    if raw.lower().startswith(("http://", "https://")):
        authority = raw.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        if "@" in authority:
            return 400, "userinfo in the target is refused (RFC 9110 4.2.4)"
    body = exp["body"]
    for n, v in exp["headers"]:
        if n.upper() == "CONTENT-LENGTH" and int(v) > len(body):
            return 400, "a body shorter than its Content-Length is an incomplete request"
        if n.upper() == "TRANSFER-ENCODING":
            codings = [c.strip().lower() for c in v.split(",") if c.strip()]
            if any(c not in ("chunked", "identity") for c in codings):
                return 501, "transfer codings other than chunked are not implemented"
    return None


def expected_view(exp):
    connection_named = set()
    for n, v in exp["headers"]:
        if n.upper() == "CONNECTION":
            connection_named |= {t.strip().upper() for t in v.split(",")}
    headers = {}
    for n, v in exp["headers"]:
        n = n.upper()
        # wsgimux drops header names with underscores (nginx's and gunicorn's default).
        if n in NOT_COMPARED or n in connection_named or "_" in n:
            continue
        key = "CONTENT_TYPE" if n == "CONTENT-TYPE" else "HTTP_" + n.replace("-", "_")
        sep = "; " if key == "HTTP_COOKIE" else ", "
        headers[key] = headers[key] + sep + v if key in headers else v
    if "HTTP_HOST" not in headers:
        # An HTTP/1.0 request that named no host gets the address it came in on (as nginx
        # gives it), so every child has a Host.
        headers["HTTP_HOST"] = ADDR
    body = exp["body"]
    if isinstance(body, str):
        body = body.encode("latin-1")
    return {
        "method": exp["method"],
        "path": unquote_to_bytes(exp["uri"]["path"]).decode("latin-1"),
        "query": exp["uri"]["query"],
        "headers": headers,
        "body": body.decode("latin-1"),
    }


def got_view(entry):
    return {
        "method": entry["method"],
        "path": entry["path"],
        "query": entry["query"],
        "headers": {k: v for k, v in entry["headers"].items() if k not in SET_BY_FRONT},
        "body": entry["body"],
    }


def load(kind, name):
    base = os.path.join(TESTS, "requests", kind, name)
    mod = treq.load_py(base + ".py")
    data = treq.request(base + ".http", mod["request"]).data
    return mod, data


def cases(kind):
    folder = os.path.join(TESTS, "requests", kind)
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".http"))


def main():
    failures = []
    counts = {"passed": 0, "not applicable": 0}

    def report(kind, name, ok, detail):
        if len(detail) > 400:
            detail = detail[:400] + "..."
        if ok is None:
            counts["not applicable"] += 1
            print("n/a   %s/%s: %s" % (kind, name, detail))
        elif ok:
            counts["passed"] += 1
            print("ok    %s/%s: %s" % (kind, name, detail))
        else:
            failures.append("%s/%s: %s" % (kind, name, detail))
            print("FAIL  %s/%s: %s" % (kind, name, detail))

    before = len(log_entries())
    for name in cases("invalid"):
        mod, data = load("invalid", name)
        changed = changed_settings(mod["cfg"])
        source = None
        if changed == ["forwarded_allow_ips"]:
            source = TRUSTED
        elif changed:
            report("invalid", name, None, "needs gunicorn settings %s" % changed)
            continue
        statuses, problem = exchange(data, source)
        if problem:
            report("invalid", name, False, problem)
        elif not statuses:
            report("invalid", name, True, "closed without an answer")
        elif all(400 <= s < 500 for s in statuses[:1]) and len(statuses) == 1:
            report("invalid", name, True, "answered %d" % statuses[0])
        else:
            report("invalid", name, False, "answered %s" % statuses)
        time.sleep(0.05)
        reached = log_entries()[before:]
        if reached:
            report("invalid", name, False, "reached the app: %s" % reached)
            before += len(reached)

    for name in cases("valid"):
        mod, data = load("valid", name)
        changed = changed_settings(mod["cfg"])
        if changed:
            report("valid", name, None, "needs gunicorn settings %s" % changed)
            continue
        expected = mod["request"]
        if not isinstance(expected, list):
            expected = [expected]
        # Requests up to the first one wsgimux answers itself with an error reach the app.
        plan = []
        for exp in expected:
            rule = stricter_rule(exp)
            plan.append((exp, rule))
            if rule and rule[0] >= 400:
                break
        statuses, problem = exchange(data)
        if problem:
            report("valid", name, False, problem)
            continue
        want = [rule[0] if rule else 200 for _, rule in plan]
        reach = [expected_view(exp) for exp, rule in plan if rule is None]
        deadline = time.time() + 2
        while len(log_entries()) - before < len(reach) and time.time() < deadline:
            time.sleep(0.02)
        got = [got_view(e) for e in log_entries()[before:]]
        before += len(got)
        rules = "; ".join(rule[1] for _, rule in plan if rule)
        if statuses != want:
            report("valid", name, False, "answered %s, expected %s %s" % (statuses, want, rules))
        elif got != reach:
            report("valid", name, False, "app saw %s, expected %s" % (got, reach))
        else:
            report("valid", name, True, rules or "reached the app unchanged")

    print("%d passed, %d not applicable, %d failed"
          % (counts["passed"], counts["not applicable"], len(failures)))
    if failures:
        print("failures:\n  " + "\n  ".join(failures))
        sys.exit(1)


main()
