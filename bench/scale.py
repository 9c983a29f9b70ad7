"""Hundreds of apps on one host: how start-up, reloads, status and the front's memory grow with
the number of apps. Each scenario writes a config of N apps (one per site, its own host),
starts the release binary, and times what a person running such a host waits for:

  ready      serve's start to its `ready:` line
  route      one host added to one app (a route-only edit): the reload's own time, as its
             summary line says it ("applied in 0.04s"), from the file read to the switch
  restart    one app's threads changed: the same, minus that app's own start time (measured
             alone, the same way, in a config of one app)

The server watches its file, so an edit may be applied by the watcher before `wsgimux reload`
asks (which then finds nothing to change): either way the summary line of the reload that
applied it is read from the server's log.
  status     `wsgimux status --json`
  rss        the front's resident memory once ready (the wsgimux process alone)

Loopback only, nothing under load; each reload and status is timed BENCH_ROUNDS times (median).
Usage: bench/scale (builds the release binary) or WSGIMUX=... BENCH_PY3=... BENCH_PY3B=...
python3 bench/scale.py.
"""
import json
import re
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


APPLIED = re.compile(r'reload #\d+ \([^)]*\): applied in ([0-9.]+)s: (.*)')


def applied(log, offset, expect):
    """The duration of the first reload the log reports after `offset` as applied, which
    must say `expect`; waits up to a minute for it."""
    deadline = time.time() + 60
    while time.time() < deadline:
        with open(log) as f:
            f.seek(offset)
            for line in f:
                m = APPLIED.search(line)
                if m:
                    if expect not in m.group(2):
                        raise RuntimeError('reload did not %s: %s' % (expect, line))
                    return float(m.group(1))
        time.sleep(0.05)
    raise RuntimeError('no applied reload in the log after the edit')


def edit_and_reload(folder, log, expect, **settings):
    """Writes the config with `settings`, asks for a reload, returns what it cost."""
    offset = os.path.getsize(log)
    config(n=settings.pop('n'), folder=folder, **settings)
    timed(['reload', '--timeout', '5m'], folder)
    return applied(log, offset, expect)


def scenario(n):
    folder = tempfile.mkdtemp(prefix='wsgimux-scale-')
    with open(os.path.join(folder, 'app.py'), 'w') as f:
        f.write(APP)
    config(n, folder)
    start = time.perf_counter()
    log = os.path.join(folder, 'wsgimux.log')
    server = subprocess.Popen([WSGIMUX, 'serve', '--config', os.path.join(folder, 'wsgimux.yaml')],
                              stdout=subprocess.PIPE, stderr=open(log, 'w'), text=True)
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
            route.append(edit_and_reload(folder, log, 're-routed busy', n=n,
                                         busy_threads=threads, extra_host=extra_host))
            # One app's threads: a restart of that app alone.
            threads = 3 if threads == 2 else 2
            restart.append(edit_and_reload(folder, log, 'restarted busy', n=n,
                                           busy_threads=threads, extra_host=extra_host))
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
    # A reload's summary line gives its time in hundredths of a second.
    def ms(seconds):
        return '< 10 ms' if seconds < 0.01 else '%.0f ms' % (seconds * 1000)
    for r in rows:
        own = alone['restart'] if alone else 0.0
        print('| %d | %.2f s | %s | %s (+%s) | %.0f ms | %.1f MiB |' % (
            r['apps'], r['ready'], ms(r['route']), ms(r['restart']),
            ms(max(0.0, r['restart'] - own)), r['status'] * 1000, r['rss_mib']))
    sys.stdout.flush()


if __name__ == '__main__':
    main()
