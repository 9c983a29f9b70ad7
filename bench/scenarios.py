"""The deployment-shaped benchmarks of bench/run, besides the full-stack table of bench.py:

- front: wsgimux -> X and nginx -> X for the same backend X (the native worker on a Unix
  socket; granian on TCP), access logs off on both and on (to a file) on both; each front with
  one thread / worker process per core, and with logs off also with one; each front's kernel
  time is shown apart, and the "kernel floor" (wsgimux's kernel time ÷ nginx's whole cost) is
  the CPU ratio wsgimux would have if its user-space cost were nil;
- django: a Django view rendering a template from a sqlite query, 2 processes everywhere;
- noisy: app A flooded with 200 ms requests beyond its capacity while app B gets light traffic;
- idle: resident memory per idle keep-alive connection.

Each returns rows for its table and the figures the targets are checked against.
"""
import os
import resource
import shutil
import socket
import threading
import time

from common import (W, PY3, MOD_WSGI, ROUNDS, SECONDS, WSGIMUX, Server, free_port, wait_http,
                    wrk, measure, med, nginx_conf, wsgimux_config, rss_kib, tree, granian_argv,
                    gunicorn_argv, uwsgi_argv, mod_wsgi_argv, native_argv)

# --- front only ------------------------------------------------------------------------------


# (front, backend, access log, threads): 'cores' is one wsgimux front thread / nginx worker
# process per core (nginx's default `auto`; wsgimux's default is one per two cores); '1' is one
# each.
FRONT_COMBOS = [(front, backend, log, threads) for backend in ('unix', 'tcp')
                for log, threads in (('off', 'cores'), ('file', 'cores'), ('off', '1'))
                for front in ('wsgimux', 'nginx')]


def start_front(front, backend, log, threads, app_dir):
    name = '%s-%s-%s-%s' % (front, backend, log, threads)
    port = free_port()
    s = Server(name, port)
    if backend == 'unix':
        sock = os.path.join(W, 'sock-%s.sock' % name)
        if os.path.exists(sock):
            os.unlink(sock)
        s.start('backend', native_argv(sock, app_dir))
        target_wsgimux, target_nginx = 'unix:' + sock, 'unix:' + sock
        deadline = time.time() + 30
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.05)
        os.chmod(sock, 0o777)
    else:
        bport = free_port()
        s.start('backend', granian_argv(bport, app_dir))
        target_wsgimux, target_nginx = 'http://127.0.0.1:%d' % bport, '127.0.0.1:%d' % bport
    logfile = os.path.join(W, 'access-%s.log' % name)
    if front == 'wsgimux':
        access = 'access_log: %s\n' % (logfile if log == 'file' else 'off')
        n = str(os.cpu_count() or 1) if threads == 'cores' else threads
        env = dict(os.environ, WSGIMUX_FRONT_THREADS=n)
        s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
            name, port, '  bench:\n    upstream: "%s"\n' % target_wsgimux, access)], env=env)
    else:
        access = ('access_log %s combined buffer=64k flush=1s;' % logfile if log == 'file'
                  else 'access_log off;')
        s.start('front', nginx_conf(name, port, target_nginx, access=access,
                                    workers='auto' if threads == 'cores' else threads))
    return s


def run_front(app_dir):
    results = {}
    for rnd in range(ROUNDS):
        order = FRONT_COMBOS if rnd % 2 == 0 else list(reversed(FRONT_COMBOS))
        for combo in order:
            s = start_front(*combo, app_dir=app_dir)
            try:
                if not wait_http(s.port):
                    print('front %s: did not answer; see %s/logs' % ('-'.join(combo), W))
                    continue
                wrk(s.port, '/', seconds=1)
                for label, path in (('hello', '/'), ('64KiB', '/big')):
                    r = measure(s, path)
                    results.setdefault(combo + (label,), []).append(r)
                    print('round %d front %-26s %-6s %8.0f req/s  front CPU µs/req %6.1f%s' % (
                        rnd + 1, '-'.join(combo), label, r['rps'], r.get('cpu_front', 0),
                        '  ERRORS' if r['errors'] or r['socket_errors'] else ''), flush=True)
            finally:
                s.stop()
    rows, figures = [], {}
    for (_, backend, log, threads) in FRONT_COMBOS[::2]:
        for label in ('hello', '64KiB'):
            w = results.get(('wsgimux', backend, log, threads, label), [])
            n = results.get(('nginx', backend, log, threads, label), [])
            if not w or not n:
                continue
            wc, nc = med(w, 'cpu_front'), med(n, 'cpu_front')
            ws, ns = med(w, 'cpu_front_sys'), med(n, 'cpu_front_sys')
            wr, nr = med(w, 'rps'), med(n, 'rps')
            # The floor: wsgimux's kernel time alone against nginx's whole cost — the ratio a
            # front making these system calls would have with no user-space time at all.
            figures[(backend, log, threads, label)] = (wc / nc, wr / nr, ws / nc)
            rows.append('| %s | %s | %s | %s | %.1f (%.1f) | %.1f (%.1f) | **%.2f×** | %.2f× '
                        '| %.0f | %.0f | %.2f× |' % (
                            'native, Unix socket' if backend == 'unix' else 'granian, TCP', log,
                            'one per core' if threads == 'cores' else threads, label, wc, ws, nc,
                            ns, wc / nc, ws / nc, wr, nr, wr / nr))
    head = ['| backend | access log | threads / workers | response | wsgimux CPU µs/req '
            '(kernel) | nginx CPU µs/req (kernel) | CPU ratio | kernel floor | wsgimux req/s | '
            'nginx req/s | req/s ratio |',
            '|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
    return head + rows, figures


# --- Django, 2 processes ---------------------------------------------------------------------

DJANGO_APP = r'''
import os

from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))
settings.configure(
    DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="bench", USE_TZ=True,
    MIDDLEWARE=[], INSTALLED_APPS=[],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                           "NAME": os.path.join(HERE, "bench.sqlite3")}},
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [HERE]}],
)
import django  # noqa: E402

django.setup()
from django.db import connection  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.template import loader  # noqa: E402
from django.urls import path  # noqa: E402


def items(request):
    with connection.cursor() as c:
        c.execute("SELECT id, name, price FROM item ORDER BY price DESC LIMIT 25")
        rows = [{"id": r[0], "name": r[1], "price": r[2]} for r in c.fetchall()]
    page = loader.get_template("items.html").render({"items": rows, "title": "Items"})
    return HttpResponse(page)


urlpatterns = [path("", items)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
app = application
'''

DJANGO_TEMPLATE = '''<!doctype html>
<html><head><title>{{ title }}</title></head><body>
<h1>{{ title }}</h1>
<table>{% for it in items %}
<tr class="{% cycle 'odd' 'even' %}"><td>{{ it.id }}</td><td>{{ it.name|title }}</td>
<td>{{ it.price|floatformat:2 }}</td></tr>{% endfor %}
</table></body></html>
'''


def write_django(app_dir):
    import sqlite3
    with open(os.path.join(app_dir, 'djapp.py'), 'w') as f:
        f.write(DJANGO_APP)
    shutil.copy(os.path.join(app_dir, 'djapp.py'), os.path.join(app_dir, 'djapp.wsgi'))
    with open(os.path.join(app_dir, 'items.html'), 'w') as f:
        f.write(DJANGO_TEMPLATE)
    db = os.path.join(app_dir, 'bench.sqlite3')
    if os.path.exists(db):
        os.unlink(db)
    con = sqlite3.connect(db)
    con.execute('CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)')
    con.executemany('INSERT INTO item (name, price) VALUES (?, ?)',
                    [('item number %d' % i, (i * 7919 % 1000) / 10.0) for i in range(500)])
    con.commit()
    con.close()
    os.chmod(db, 0o644)


def django_setups(app_dir):
    def wsgimux_native(name):
        port = free_port()
        s = Server(name, port)
        s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
            name, port, '  bench:\n    python: %s\n    script: %s\n    worker: native\n'
            '    processes: 2\n    threads: 4\n' % (PY3, os.path.join(app_dir, 'djapp.py')),
            'access_log: off\n')])
        return s

    def nginx_gunicorn(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', gunicorn_argv(backend, app_dir, 'djapp:app', workers=2, threads=4))
        s.start('front', nginx_conf(name, port, '127.0.0.1:%d' % backend))
        return s

    def granian(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(port, app_dir, workers=2, threads=4, target='djapp:app'))
        return s

    def uwsgi(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', uwsgi_argv(port, app_dir, 'djapp.py', processes=2, threads=4,
                                      router=True))
        return s

    def mod_wsgi(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', mod_wsgi_argv(port, app_dir, name, 'djapp.wsgi', processes=2,
                                         threads=4))
        return s

    out = [('wsgimux+native', wsgimux_native), ('nginx+gunicorn', nginx_gunicorn),
           ('granian', granian), ('uwsgi (with its http router)', uwsgi)]
    if MOD_WSGI:
        out.append(('mod_wsgi-express', mod_wsgi))
    return out


def run_django(app_dir):
    write_django(app_dir)
    setups = django_setups(app_dir)
    results = {}
    for rnd in range(ROUNDS):
        order = setups if rnd % 2 == 0 else list(reversed(setups))
        for name, start in order:
            s = start('django-' + name.split()[0].replace('+', '-'))
            try:
                if not wait_http(s.port, limit=60):
                    print('django %s: did not answer; see %s/logs' % (name, W))
                    continue
                wrk(s.port, '/', seconds=1)
                r = measure(s, '/')
                results.setdefault(name, []).append(r)
                print('round %d django %-18s %8.0f req/s  p99 %6.2f ms%s' % (
                    rnd + 1, name, r['rps'], r['p99'] or 0,
                    '  ERRORS' if r['errors'] or r['socket_errors'] else ''), flush=True)
            finally:
                s.stop()
    base = med(results.get('wsgimux+native', []), 'rps')
    rows = ['| Django view, 2 processes × 4 threads | req/s | p50 ms | p99 ms | wsgimux+native is |',
            '|---|---:|---:|---:|---:|']
    figures = {}
    for name, _ in setups:
        rs = results.get(name)
        if not rs:
            continue
        rps = med(rs, 'rps')
        figures[name] = rps
        rows.append('| %s | %.0f | %.2f | %.2f | %s |' % (
            name, rps, med(rs, 'p50') or 0, med(rs, 'p99') or 0,
            '%.2f×' % (base / rps) if base and rps else '–'))
    return rows, figures


# --- noisy neighbour -------------------------------------------------------------------------

NOISY_APP = r'''
import time


def slow(environ, start_response):
    time.sleep(0.2)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"slow\n"]


def fast(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"fast\n"]
'''


def light_client(port, path, seconds, interval=0.02):
    """B's light traffic: one keep-alive client, a request every `interval`; latencies (ms)."""
    lat, failures = [], 0
    end = time.time() + seconds
    s = None
    req = ('GET %s HTTP/1.1\r\nHost: bench\r\n\r\n' % path).encode()
    while time.time() < end:
        t = time.time()
        try:
            if s is None:
                s = socket.create_connection(('127.0.0.1', port), timeout=10)
            s.sendall(req)
            data = b''
            while not data.endswith(b'fast\n'):
                chunk = s.recv(4096)
                if not chunk:
                    raise OSError('closed')
                data += chunk
            if not data.startswith(b'HTTP/1.1 200'):
                failures += 1
            lat.append((time.time() - t) * 1000)
        except OSError:
            failures += 1
            s = None
        time.sleep(max(0.0, interval - (time.time() - t)))
    return lat, failures


def p99(values):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def noisy_setups(app_dir):
    def wsgimux(name):
        port = free_port()
        s = Server(name, port)
        apps = ''.join(
            '  %s:\n    python: %s\n    script: %s\n    callable: %s\n    worker: native\n'
            '    threads: 4\n    mount: /%s\n' % (n, PY3, os.path.join(app_dir, 'noisy.py'), c, n)
            for n, c in (('a', 'slow'), ('b', 'fast')))
        s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
            name, port, apps, 'access_log: off\n')])
        return s

    def nginx(name):
        port, pa, pb = free_port(), free_port(), free_port()
        s = Server(name, port)
        for role, p, c in (('backend-a', pa, 'slow'), ('backend-b', pb, 'fast')):
            s.start(role, gunicorn_argv(p, app_dir, 'noisy:' + c, threads=4))
        s.start('front', nginx_conf(name, port, routes={'/a': '127.0.0.1:%d' % pa,
                                                        '/b': '127.0.0.1:%d' % pb}))
        return s

    return [('wsgimux', wsgimux), ('nginx+2 gunicorns', nginx)]


def run_noisy(app_dir):
    with open(os.path.join(app_dir, 'noisy.py'), 'w') as f:
        f.write(NOISY_APP)
    seconds = max(SECONDS, 8)
    results = {}
    for rnd in range(ROUNDS):
        for name, start in noisy_setups(app_dir):
            s = start('noisy-' + name.split('+')[0])
            try:
                if not (wait_http(s.port, '/b/') and wait_http(s.port, '/a/')):
                    print('noisy %s: did not answer; see %s/logs' % (name, W))
                    continue
                alone, fail_alone = light_client(s.port, '/b/', seconds)
                flood = {}
                t = threading.Thread(target=lambda: flood.update(
                    wrk(s.port, '/a/', seconds=seconds + 2, connections=200)))
                t.start()
                time.sleep(1)
                busy, fail_busy = light_client(s.port, '/b/', seconds)
                t.join()
                r = {'alone': p99(alone), 'flooded': p99(busy), 'failures': fail_alone + fail_busy,
                     'a_rps': flood.get('rps', 0), 'a_errors': flood.get('errors', 0)}
                results.setdefault(name, []).append(r)
                print('round %d noisy %-18s B p99 alone %6.2f ms, A flooded %6.2f ms; B failures '
                      '%d; A %.0f req/s, %d non-2xx' % (rnd + 1, name, r['alone'] or 0,
                                                      r['flooded'] or 0, r['failures'],
                                                      r['a_rps'], r['a_errors']), flush=True)
            finally:
                s.stop()
    rows = ['| noisy neighbour | B p99 alone ms | B p99 while A is flooded ms | ratio | '
            'B failures | A req/s | A non-2xx |', '|---|---:|---:|---:|---:|---:|---:|']
    figures = {}
    for name, _ in noisy_setups(app_dir):
        rs = results.get(name)
        if not rs:
            continue
        a, f = med(rs, 'alone'), med(rs, 'flooded')
        figures[name] = (a, f, sum(r['failures'] for r in rs))
        rows.append('| %s | %.2f | %.2f | %.2f× | %d | %.0f | %.0f |' % (
            name, a, f, f / a, figures[name][2], med(rs, 'a_rps'), med(rs, 'a_errors')))
    return rows, figures


# --- idle connections ------------------------------------------------------------------------

def hold_idle(port, n):
    """n keep-alive connections, each after one request; returns them open."""
    req = b'GET / HTTP/1.1\r\nHost: bench\r\n\r\n'
    socks = []
    for _ in range(n):
        c = socket.create_connection(('127.0.0.1', port), timeout=10)
        c.sendall(req)
        data = b''
        while b'Hello' not in data:
            chunk = c.recv(4096)
            if not chunk:
                raise OSError('closed before the response')
            data += chunk
        socks.append(c)
    return socks


def run_idle(app_dir, n=10000):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 500:
        return ['idle connections: the open-file limit (%d) is below %d' % (hard, n + 500)], {}
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    figures = {}
    for front in ('wsgimux', 'nginx'):
        name = 'idle-' + front
        port = free_port()
        s = Server(name, port)
        if front == 'wsgimux':
            s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
                name, port, '  bench:\n    python: %s\n    script: %s\n    worker: native\n'
                % (PY3, os.path.join(app_dir, 'hello.py')),
                'access_log: off\nlimits: {max_connections: %d}\n' % (n + 100))])
        else:
            bport = free_port()
            s.start('backend', granian_argv(bport, app_dir))
            s.start('front', nginx_conf(name, port, '127.0.0.1:%d' % bport,
                                        connections=n + 100))
        try:
            if not wait_http(s.port):
                continue
            time.sleep(1)
            pids = front_pids(s, front)
            before = sum(rss_kib(p) for p in pids)
            socks = hold_idle(s.port, n)
            time.sleep(2)
            held = sum(rss_kib(p) for p in front_pids(s, front))
            figures[front] = (held - before) * 1024.0 / n
            print('idle %s: RSS %d KiB -> %d KiB with %d idle connections: %.0f bytes each'
                  % (front, before, held, n, figures[front]), flush=True)
            for c in socks:
                c.close()
        finally:
            s.stop()
    rows = ['| %d idle keep-alive connections (each after one request) | bytes of RSS each |' % n,
            '|---|---:|']
    rows += ['| %s | %.0f |' % (f, b) for f, b in figures.items()]
    return rows, figures


def front_pids(s, front):
    if front == 'wsgimux':
        return s.pids()['front']
    return tree(s.procs['front'].pid)
