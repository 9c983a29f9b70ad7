#!/usr/bin/env python3
"""wsgimux against its peers, in one run, on one machine: req/s, latency and CPU per request.

Run through bench/run (which installs the peers first). Every server gets the same apps (a
14-byte hello, a 64 KiB response, ~1 ms of Python work), the same load (wrk, loopback only,
bounded in time) and several alternating rounds; medians are reported. CPU µs per request is
read from /proc for each server's process tree: on a shared 2-core machine it is the figure
that stays steady when req/s moves 20-30 % between identical runs.

Access logs are off on every server in the full-stack table (nginx's and wsgimux's alike); the
front-only table measures both fronts with them off and with them on (buffered to a file).
Then the scenarios of scenarios.py, and a last table: each target of the performance issue with
its measured ratio, met or not met.

Environment: BENCH_DIR (work folder), BENCH_ROUNDS (3), BENCH_SECONDS (5), BENCH_CONNECTIONS
(32), BENCH_ONLY (comma-separated server names of the full-stack table), BENCH_SCENARIOS
(comma-separated, default all: stack, front, django, noisy, idle), WSGIMUX (the binary).
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (W, PY3, PY27, MOD_WSGI, ROUNDS, SECONDS, CONNECTIONS, WSGIMUX,  # noqa: E402
                    Server, free_port, wait_http, measure, med, nginx_conf, wsgimux_config,
                    app_yaml, granian_argv, gunicorn_argv, uwsgi_argv, mod_wsgi_argv,
                    native_argv)
import scenarios  # noqa: E402

APP = r'''
import hashlib

HELLO = b"Hello, world!\n"
BIG = b"x" * 65536


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/big":
        body = BIG
    elif path == "/work":
        # About 1 ms of pure-Python work.
        h = b"seed"
        for _ in range(3500):
            h = hashlib.sha256(h).digest()
        body = h.hex().encode() + b"\n" if hasattr(h, "hex") else h.encode("hex") + b"\n"
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app
'''

PATHS = [('hello', '/'), ('64KiB', '/big'), ('1ms-work', '/work')]


def setups():
    """name → function starting the setup and returning (Server, {role: 'front'|'backend'})."""
    app_dir = os.path.join(W, 'app')

    def wsgimux(python, worker):
        def start(name):
            port = free_port()
            s = Server(name, port)
            s.start('wsgimux', [WSGIMUX, 'serve', '--config',
                                wsgimux_config(name, port, app_yaml(python, worker))])
            return s
        return start

    def direct(argv):
        # A server clients hit without a proxy in front.
        def start(name):
            port = free_port()
            s = Server(name, port)
            s.start('backend', argv(port, name))
            return s
        return start

    native_direct = direct(lambda port, _: native_argv('tcp:127.0.0.1:%d' % port, app_dir))
    granian = direct(lambda port, _: granian_argv(port, app_dir))
    uwsgi = direct(lambda port, _: uwsgi_argv(port, app_dir))
    mod_wsgi = direct(lambda port, name: mod_wsgi_argv(port, app_dir, name))

    def nginx_gunicorn(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', gunicorn_argv(backend, app_dir))
        s.start('front', nginx_conf(name, port, '127.0.0.1:%d' % backend))
        return s

    def wsgimux_granian(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(backend, app_dir))
        s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
            name, port, '  bench:\n    upstream: "http://127.0.0.1:%d"\n' % backend)])
        return s

    def nginx_granian(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(backend, app_dir))
        s.start('front', nginx_conf(name, port, '127.0.0.1:%d' % backend))
        return s

    out = [
        ('wsgimux+native', wsgimux(PY3, 'native')),
        ('wsgimux+portable', wsgimux(PY3, 'portable')),
    ]
    if PY27:
        out.append(('wsgimux+portable-2.7', wsgimux(PY27, 'portable')))
    out += [
        ('native direct', native_direct),
        ('nginx+gunicorn', nginx_gunicorn),
        ('granian direct', granian),
        ('uwsgi direct', uwsgi),
    ]
    if MOD_WSGI:
        out.append(('mod_wsgi-express', mod_wsgi))
    out += [('wsgimux->granian', wsgimux_granian), ('nginx->granian', nginx_granian)]
    only = os.environ.get('BENCH_ONLY')
    if only:
        wanted = set(x.strip() for x in only.split(','))
        out = [x for x in out if x[0] in wanted]
    return out


def run_stack():
    results = {}  # (setup, app) → [round results]
    names = setups()
    for rnd in range(ROUNDS):
        # Alternate the order each round so drift (thermal, other tenants) spreads evenly.
        order = names if rnd % 2 == 0 else list(reversed(names))
        for name, start in order:
            server = start(name)
            try:
                if not wait_http(server.port):
                    print('%s: did not answer; see %s/logs' % (name, W), file=sys.stderr)
                    continue
                # A short warm-up per start.
                subprocess.run(['wrk', '-t1', '-c%d' % CONNECTIONS, '-d1s',
                                'http://127.0.0.1:%d/' % server.port],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for label, path in PATHS:
                    r = measure(server, path)
                    results.setdefault((name, label), []).append(r)
                    print('round %d  %-22s %-9s %9.0f req/s  p50 %6.2f ms  p99 %7.2f ms  '
                          'cpu µs/req front %6.1f backend %6.1f%s' % (
                              rnd + 1, name, label, r['rps'], r['p50'] or 0, r['p99'] or 0,
                              r.get('cpu_front', 0), r.get('cpu_backend', 0),
                              '  ERRORS %d %s' % (r['errors'], r['socket_errors'])
                              if r['errors'] or r['socket_errors'] else ''),
                          flush=True)
            finally:
                server.stop()
    with open(os.path.join(W, 'results.json'), 'w') as f:
        json.dump(dict(('%s|%s' % k, v) for k, v in results.items()), f, indent=1)
    return report(results, names), results


def main():
    os.makedirs(os.path.join(W, 'logs'), exist_ok=True)
    app_dir = os.path.join(W, 'app')
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, 'hello.py'), 'w') as f:
        f.write(APP)
    shutil.copy(os.path.join(app_dir, 'hello.py'), os.path.join(app_dir, 'hello.wsgi'))
    for d in (W, app_dir):
        os.chmod(d, 0o755)
    wanted = os.environ.get('BENCH_SCENARIOS', 'stack,front,django,noisy,idle').split(',')
    tables, figures = [], {}
    runs = [('stack', run_stack), ('front', lambda: scenarios.run_front(app_dir)),
            ('django', lambda: scenarios.run_django(app_dir)),
            ('noisy', lambda: scenarios.run_noisy(app_dir)),
            ('idle', lambda: scenarios.run_idle(app_dir))]
    for name, run in runs:
        if name not in wanted:
            continue
        print('== %s' % name, flush=True)
        rows, figures[name] = run()
        tables.append(rows)
    print()
    print('Medians of %d rounds; wrk -t1 -c%d -d%ds; CPU µs per request of each process tree.'
          % (ROUNDS, CONNECTIONS, SECONDS))
    for rows in tables:
        print()
        print('\n'.join(rows))
    print()
    print('\n'.join(targets(figures)))


def verdict(ok):
    return 'met' if ok else '**not met**'


def targets(f):
    """The performance issue's targets, each with what was measured."""
    rows = ['| target | measured | |', '|---|---|---|']
    front = f.get('front', {})
    for (backend, log, threads, label), (cpu, rps, floor) in sorted(front.items()):
        what = '%s backend, log %s, %s, %s' % (
            backend, log, 'one thread per core' if threads == 'cores' else '1 thread', label)
        rows.append('| front CPU/req ≤ 0.8× nginx (%s) | %.2f× (kernel floor %.2f×) | %s |'
                    % (what, cpu, floor, verdict(cpu <= 0.8)))
        if label == 'hello':
            rows.append('| front req/s ≥ 1.1× nginx (%s) | %.2f× | %s |' % (what, rps, verdict(rps >= 1.1)))
    stack = f.get('stack', {})

    def ratio(a, b, label):
        x, y = med(stack.get((a, label), []), 'rps'), med(stack.get((b, label), []), 'rps')
        return x / y if x and y else None

    for label in ('hello', '64KiB'):
        r = ratio('native direct', 'granian direct', label)
        if r:
            rows.append('| native direct ≥ 1.2× granian direct (%s) | %.2f× | %s |' % (label, r, verdict(r >= 1.2)))
        r = ratio('wsgimux+native', 'nginx+gunicorn', label)
        if r:
            rows.append('| wsgimux+native ≥ 5× nginx+gunicorn (%s) | %.2f× | %s |' % (label, r, verdict(r >= 5)))
    dj = f.get('django', {})
    if dj.get('wsgimux+native') and dj.get('nginx+gunicorn'):
        r = dj['wsgimux+native'] / dj['nginx+gunicorn']
        rows.append('| wsgimux+native ≥ 1.2× nginx+gunicorn (Django, 2 processes) | %.2f× | %s |' % (r, verdict(r >= 1.2)))
    noisy = f.get('noisy', {})
    w, n = noisy.get('wsgimux'), noisy.get('nginx+2 gunicorns')
    if w:
        rows.append('| noisy neighbour: B p99 flooded ≤ 2× alone (wsgimux) | %.2f× (%.2f / %.2f ms) | %s |'
                    % (w[1] / w[0], w[1], w[0], verdict(w[1] <= 2 * w[0])))
    if w and n:
        rows.append('| noisy neighbour: B p99 flooded, wsgimux ≤ nginx | %.2f vs %.2f ms | %s |'
                    % (w[1], n[1], verdict(w[1] <= n[1])))
    idle = f.get('idle', {})
    if 'wsgimux' in idle:
        rows.append('| idle connection ≤ 8 KB | %.0f bytes (nginx: %s) | %s |' % (
            idle['wsgimux'], '%.0f' % idle['nginx'] if 'nginx' in idle else '–',
            verdict(idle['wsgimux'] <= 8000)))
    return rows


def report(results, names):
    """The full-stack tables (rows)."""
    out = []
    for label, _ in PATHS:
        base = med(results.get(('wsgimux+native', label), []), 'rps')
        out.append('')
        out.append('| %s | req/s | p50 ms | p99 ms | CPU µs/req front | CPU µs/req backend | '
                   'wsgimux+native is |' % label)
        out.append('|---|---:|---:|---:|---:|---:|---:|')
        for name, _ in names:
            rs = results.get((name, label))
            if not rs:
                continue
            rps = med(rs, 'rps')
            ratio = '%.2f×' % (base / rps) if base and rps else '–'
            cpu_front = med(rs, 'cpu_front')
            cpu_backend = med(rs, 'cpu_backend')
            out.append('| %s | %.0f | %.2f | %.2f | %s | %s | %s |' % (
                name, rps, med(rs, 'p50') or 0, med(rs, 'p99') or 0,
                '%.1f' % cpu_front if cpu_front is not None else '–',
                '%.1f' % cpu_backend if cpu_backend is not None else '–', ratio))
    return out


if __name__ == '__main__':
    main()
