"""Hundreds of apps on one host: how start-up, reloads, status and the front's memory grow with
the number of apps. Each scenario writes a config of N apps (one per site, its own host),
starts the release binary, and times what a person running such a host waits for:

  ready      serve's start to its `ready:` line
  route      `wsgimux reload` after one host is added to one app (a route-only edit)
  restart    `wsgimux reload` after one app's threads changed, minus that app's own start time
             (measured alone, the same way, in a config of one app)
  status     `wsgimux status --json`
  rss        the front's resident memory once ready (the wsgimux process alone)

Loopback only, nothing under load; each reload and status is timed BENCH_ROUNDS times (median).
Usage: bench/scale (builds the release binary) or WSGIMUX=... BENCH_PY3=... BENCH_PY3B=...
python3 bench/scale.py.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WSGIMUX = os.environ['WSGIMUX']
PY_A = os.environ['BENCH_PY3']
PY_B = os.environ.get('BENCH_PY3B', PY_A)
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '5'))
SIZES = [int(n) for n in os.environ.get('BENCH_SCALE_SIZES', '1,100,500,2000').split(',')]

APP = '''def application(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'hello']
'''


def config(n, folder, busy_threads=2, extra_host=False):
    """N apps: `busy` starts at once (the one whose threads change); the rest on demand, half
    on each interpreter."""
    lines = ['listen: "127.0.0.1:0"', 'runtime_dir: %s/run' % folder, 'access_log: off', 'apps:']
    lines += ['  busy:', '    python: %s' % PY_A, '    script: app.py',
              '    hosts: [busy.test%s]' % (', busy2.test' if extra_host else ''),
              '    threads: %d' % busy_threads]
    for i in range(n - 1):
        lines += ['  site%d:' % i, '    python: %s' % (PY_A if i % 2 else PY_B),
                  '    script: app.py', '    hosts: [site%d.test]' % i, '    start: on_demand']
    with open(os.path.join(folder, 'wsgimux.yaml'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


def rss_kib(pid):
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    return 0


def timed(args, cwd):
    start = time.perf_counter()
    out = subprocess.run([WSGIMUX] + args + ['--config', os.path.join(cwd, 'wsgimux.yaml')],
                         capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError('%s: %s%s' % (' '.join(args), out.stdout, out.stderr))
    return took, out.stdout


def scenario(n):
    folder = tempfile.mkdtemp(prefix='wsgimux-scale-')
    with open(os.path.join(folder, 'app.py'), 'w') as f:
        f.write(APP)
    config(n, folder)
    start = time.perf_counter()
    server = subprocess.Popen([WSGIMUX, 'serve', '--config', os.path.join(folder, 'wsgimux.yaml')],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ready = None
    for line in server.stdout:
        if line.startswith('ready: '):
            ready = time.perf_counter() - start
            break
    if ready is None:
        server.kill()
        raise RuntimeError('%d apps: no ready line' % n)
    time.sleep(0.5)
    rss = rss_kib(server.pid)
    route, restart, status = [], [], []
    threads = 2
    try:
        for r in range(ROUNDS):
            # Route-only: a host added to (then removed from) one app.
            extra_host = r % 2 == 0
            config(n, folder, busy_threads=threads, extra_host=extra_host)
            took, out = timed(['reload', '--timeout', '5m'], folder)
            if 're-routed busy' not in out:
                raise RuntimeError('not a route-only reload: ' + out)
            route.append(took)
            # One app's threads: a restart of that app alone.
            threads = 3 if threads == 2 else 2
            config(n, folder, busy_threads=threads, extra_host=extra_host)
            took, out = timed(['reload', '--timeout', '5m'], folder)
            if 'restarted busy' not in out:
                raise RuntimeError('not a restart: ' + out)
            restart.append(took)
            took, out = timed(['status', '--json'], folder)
            json.loads(out)
            status.append(took)
    finally:
        server.terminate()
        server.wait(timeout=60)
    med = statistics.median
    return {'apps': n, 'ready': ready, 'route': med(route), 'restart': med(restart),
            'status': med(status), 'rss_mib': rss / 1024.0}


def main():
    rows = [scenario(n) for n in SIZES]
    alone = next((r for r in rows if r['apps'] == 1), None)
    print('| apps | start-up to `ready:` | route-only reload | one app\'s threads changed '
          '(minus its own start) | `status --json` | front RSS |')
    print('|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        own = alone['restart'] if alone else 0.0
        print('| %d | %.2f s | %.0f ms | %.0f ms (%.0f ms) | %.0f ms | %.1f MiB |' % (
            r['apps'], r['ready'], r['route'] * 1000, r['restart'] * 1000,
            (r['restart'] - own) * 1000, r['status'] * 1000, r['rss_mib']))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
