#!/usr/bin/env python3
"""wsgimux against its peers, in one run, on one machine: req/s, latency and CPU per request.

Run through bench/run (which installs the peers first). Every server gets the same apps (a
14-byte hello, a 64 KiB response, ~1 ms of Python work), the same load (wrk, loopback only,
bounded in time) and several alternating rounds; medians are reported. CPU µs per request is
read from /proc for each server's process tree: on a shared 2-core machine it is the figure
that stays steady when req/s moves 20-30 % between identical runs.

Environment: BENCH_DIR (work folder), BENCH_ROUNDS (3), BENCH_SECONDS (5), BENCH_CONNECTIONS
(32), BENCH_ONLY (comma-separated server names), WSGIMUX (the binary).
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

W = os.environ.get('BENCH_DIR', '/tmp/wsgimux-bench')
ROUNDS = int(os.environ.get('BENCH_ROUNDS', '3'))
SECONDS = int(os.environ.get('BENCH_SECONDS', '5'))
CONNECTIONS = int(os.environ.get('BENCH_CONNECTIONS', '32'))
WSGIMUX = os.environ['WSGIMUX']
PY3 = os.environ['BENCH_PY3']          # a venv of CPython 3.11 with gunicorn, granian, uwsgi
PY27 = os.environ.get('BENCH_PY27')    # CPython 2.7 (portable worker), optional
MOD_WSGI = os.environ.get('BENCH_MOD_WSGI')  # mod_wsgi-express, optional
MW_USER = os.environ.get('BENCH_MW_USER', 'wsgimux-bench')
TICK = os.sysconf('SC_CLK_TCK')

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


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port, path='/', limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            s = socket.create_connection(('127.0.0.1', port), timeout=1)
            s.sendall(('GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n' % path).encode())
            data = s.recv(64)
            s.close()
            if data.startswith(b'HTTP/1.1 200'):
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open('/proc/%d/stat' % p) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            # utime, stime (and the reaped children's, for processes that came and went)
            total += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError):
            pass
    return total / float(TICK)


class Server(object):
    """One server setup: processes to start, the port clients hit, the process trees to bill."""

    def __init__(self, name, port):
        self.name = name
        self.port = port
        self.procs = {}  # role → Popen

    def start(self, role, argv, cwd=None, env=None):
        log = open(os.path.join(W, 'logs', '%s.%s.log' % (self.name, role)), 'ab')
        self.procs[role] = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def pids(self):
        out = {}
        for role, p in self.procs.items():
            pids = tree(p.pid)
            if role == 'wsgimux':
                # The front is wsgimux itself; its children are the backend.
                out['front'] = pids[:1]
                out.setdefault('backend', []).extend(pids[1:])
            else:
                out.setdefault(role, []).extend(pids)
        return out

    def stop(self):
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def wsgimux_config(name, port, apps_yaml):
    path = os.path.join(W, '%s.yaml' % name)
    with open(path, 'w') as f:
        f.write('listen: "127.0.0.1:%d"\nruntime_dir: %s\napps:\n%s'
                % (port, os.path.join(W, 'run-' + name), apps_yaml))
    return path


def app_yaml(python, worker):
    return ('  bench:\n    python: %s\n    script: %s\n    threads: 8\n    worker: %s\n'
            % (python, os.path.join(W, 'app', 'hello.py'), worker))


def nginx_conf(name, port, backend_port):
    d = os.path.join(W, 'nginx-' + name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, 'nginx.conf')
    with open(conf, 'w') as f:
        f.write('''pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fcgi; uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:%(backend)d; keepalive 32; }
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_buffer_size 16k;
  proxy_buffers 8 16k;
  server { listen 127.0.0.1:%(port)d; location / { proxy_pass http://backend; } }
}
''' % {'d': d, 'port': port, 'backend': backend_port})
    return ['nginx', '-c', conf, '-p', d + '/', '-g', 'daemon off; worker_processes 1;']


def venv_bin(tool):
    return os.path.join(os.path.dirname(PY3), tool)


def granian_argv(port):
    return [venv_bin('granian'), '--interface', 'wsgi', '--host', '127.0.0.1', '--port', str(port),
            '--workers', '1', '--blocking-threads', '8', '--http', '1', '--no-access-log',
            '--working-dir', os.path.join(W, 'app'), 'hello:app']


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

    def native_direct(name):
        # The native worker alone, on TCP: the launcher and library wsgimux writes out.
        run = os.path.join(W, 'run-native-files')
        port = free_port()
        probe = subprocess.Popen([WSGIMUX, 'serve', '--config', wsgimux_config(
            'native-files', free_port(), app_yaml(PY3, 'native'))],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for line in probe.stdout:
            if line.startswith(b'ready:'):
                break
        native = [os.path.join(run, d) for d in os.listdir(run) if d.startswith('native-')][0]
        launcher = os.path.join(W, 'wsgimux_worker.py')
        shutil.copy(os.path.join(run, 'wsgimux_worker.py'), launcher)
        shutil.rmtree(os.path.join(W, 'native-lib'), ignore_errors=True)
        shutil.copytree(native, os.path.join(W, 'native-lib'))
        probe.terminate()
        probe.wait()
        s = Server(name, port)
        s.start('backend', [PY3, '-u', launcher, '--native', os.path.join(W, 'native-lib'),
                            '--socket', 'tcp:127.0.0.1:%d' % port, '--threads', '8',
                            '--script', os.path.join(app_dir, 'hello.py'), '--parent-pid', '0'])
        return s

    def nginx_gunicorn(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', [venv_bin('gunicorn'), '-w', '1', '-k', 'gthread', '--threads', '8',
                            '-b', '127.0.0.1:%d' % backend, '--chdir', app_dir, 'hello:app'])
        s.start('front', nginx_conf(name, port, backend))
        return s

    def granian(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(port))
        return s

    def uwsgi(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', [venv_bin('uwsgi'), '--http11-socket', '127.0.0.1:%d' % port,
                            '--chdir', app_dir, '--wsgi-file', 'hello.py', '--master',
                            '--processes', '1', '--threads', '8', '--die-on-term',
                            '--disable-logging'])
        return s

    def mod_wsgi(name):
        port = free_port()
        s = Server(name, port)
        s.start('backend', [MOD_WSGI, 'start-server', os.path.join(app_dir, 'hello.wsgi'),
                            '--host', '127.0.0.1', '--port', str(port), '--processes', '1',
                            '--threads', '8', '--max-clients', '64', '--locale', 'C.UTF-8',
                            '--user', MW_USER, '--group', MW_USER,
                            '--server-root', os.path.join(W, 'mw-' + name)])
        return s

    def wsgimux_granian(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(backend))
        s.start('wsgimux', [WSGIMUX, 'serve', '--config', wsgimux_config(
            name, port, '  bench:\n    upstream: "http://127.0.0.1:%d"\n' % backend)])
        return s

    def nginx_granian(name):
        port, backend = free_port(), free_port()
        s = Server(name, port)
        s.start('backend', granian_argv(backend))
        s.start('front', nginx_conf(name, port, backend))
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


LATENCY = re.compile(r'^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$', re.M)


def wrk(port, path):
    out = subprocess.run(['wrk', '-t1', '-c%d' % CONNECTIONS, '-d%ds' % SECONDS, '--latency',
                          '-H', 'Host: bench', 'http://127.0.0.1:%d%s' % (port, path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=SECONDS + 30).stdout.decode()
    reqs = re.search(r'^\s+(\d+) requests in', out, re.M)
    rps = re.search(r'Requests/sec:\s+([\d.]+)', out)
    errors = re.search(r'Non-2xx or 3xx responses: (\d+)', out)
    sock_errors = re.search(r'Socket errors: (.*)', out)
    lat = {}
    for pct, value, unit in LATENCY.findall(out):
        lat[pct] = float(value) * {'us': 0.001, 'ms': 1.0, 's': 1000.0}[unit]
    return {
        'requests': int(reqs.group(1)) if reqs else 0,
        'rps': float(rps.group(1)) if rps else 0.0,
        'p50': lat.get('50'), 'p99': lat.get('99'),
        'errors': int(errors.group(1)) if errors else 0,
        'socket_errors': sock_errors.group(1) if sock_errors else '',
    }


def measure(server, path):
    pids = server.pids()
    before = dict((role, cpu_seconds(p)) for role, p in pids.items())
    r = wrk(server.port, path)
    pids = server.pids()
    n = max(r['requests'], 1)
    for role, p in pids.items():
        r['cpu_' + role] = (cpu_seconds(p) - before.get(role, 0.0)) * 1e6 / n
    return r


def main():
    os.makedirs(os.path.join(W, 'logs'), exist_ok=True)
    os.makedirs(os.path.join(W, 'app'), exist_ok=True)
    with open(os.path.join(W, 'app', 'hello.py'), 'w') as f:
        f.write(APP)
    shutil.copy(os.path.join(W, 'app', 'hello.py'), os.path.join(W, 'app', 'hello.wsgi'))
    for d in (W, os.path.join(W, 'app')):
        os.chmod(d, 0o755)
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
    report(results, names)


def med(rs, key):
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


def report(results, names):
    print()
    print('Medians of %d rounds; wrk -t1 -c%d -d%ds; CPU µs per request of each process tree.'
          % (ROUNDS, CONNECTIONS, SECONDS))
    for label, _ in PATHS:
        base = med(results.get(('wsgimux+native', label), []), 'rps')
        print()
        print('| %s | req/s | p50 ms | p99 ms | CPU µs/req front | CPU µs/req backend | '
              'wsgimux+native is |' % label)
        print('|---|---:|---:|---:|---:|---:|---:|')
        for name, _ in names:
            rs = results.get((name, label))
            if not rs:
                continue
            rps = med(rs, 'rps')
            ratio = '%.2f×' % (base / rps) if base and rps else '–'
            cpu_front = med(rs, 'cpu_front')
            cpu_backend = med(rs, 'cpu_backend')
            print('| %s | %.0f | %.2f | %.2f | %s | %s | %s |' % (
                name, rps, med(rs, 'p50') or 0, med(rs, 'p99') or 0,
                '%.1f' % cpu_front if cpu_front is not None else '–',
                '%.1f' % cpu_backend if cpu_backend is not None else '–', ratio))
    with open(os.path.join(W, 'results.json'), 'w') as f:
        json.dump(dict(('%s|%s' % k, v) for k, v in results.items()), f, indent=1)


if __name__ == '__main__':
    main()
