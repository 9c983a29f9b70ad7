"""What bench.py and scenarios.py share: settings from the environment, starting and stopping
servers, wrk runs, CPU and memory read from /proc, the nginx and wsgimux configs."""
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
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


def cpu_times(pids):
    """(user, system) CPU seconds of `pids`, with their reaped children's (for processes that
    came and went)."""
    user = system = 0
    for p in pids:
        try:
            with open('/proc/%d/stat' % p) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            # utime, stime, cutime, cstime
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
        except (OSError, IndexError):
            pass
    return user / float(TICK), system / float(TICK)


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


def wsgimux_config(name, port, apps_yaml, extra='access_log: off\n'):
    """A wsgimux config; `extra` is top-level YAML (the access log is off unless it says)."""
    path = os.path.join(W, '%s.yaml' % name)
    with open(path, 'w') as f:
        f.write('listen: "127.0.0.1:%d"\nruntime_dir: %s\n%sapps:\n%s'
                % (port, os.path.join(W, 'run-' + name), extra, apps_yaml))
    return path


def app_yaml(python, worker):
    return ('  bench:\n    python: %s\n    script: %s\n    threads: 8\n    worker: %s\n'
            % (python, os.path.join(W, 'app', 'hello.py'), worker))


def nginx_conf(name, port, backend=None, access='access_log off;', routes=None,
               connections=4096, workers='auto'):
    """nginx proxying to `backend` ("127.0.0.1:PORT" or "unix:/path"), or with `routes`
    {prefix: backend} one upstream per prefix; keep-alive to the backends, 16 KiB buffers;
    `workers` processes (auto, Debian's default: one per core, as wsgimux's front threads)."""
    d = os.path.join(W, 'nginx-' + name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, 'nginx.conf')
    routes = routes or {'/': backend}
    upstreams, locations = [], []
    for i, (prefix, server) in enumerate(sorted(routes.items())):
        upstreams.append('upstream b%d { server %s; keepalive 32; }' % (i, server))
        locations.append('location %s { proxy_pass http://b%d; }' % (prefix, i))
    with open(conf, 'w') as f:
        f.write('''pid %(d)s/nginx.pid;
error_log %(d)s/error.log;
worker_rlimit_nofile %(files)d;
events { worker_connections %(conns)d; }
http {
  %(access)s
  client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy;
  fastcgi_temp_path %(d)s/fcgi; uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  keepalive_requests 1000000;
  %(upstreams)s
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  proxy_set_header Host $host;
  proxy_buffer_size 16k;
  proxy_buffers 8 16k;
  server { listen 127.0.0.1:%(port)d; %(locations)s }
}
''' % {'d': d, 'port': port, 'access': access, 'conns': connections,
            'files': connections * 2 + 100, 'upstreams': '\n  '.join(upstreams),
            'locations': ' '.join(locations)})
    return ['nginx', '-c', conf, '-p', d + '/', '-g', 'daemon off; worker_processes %s;' % workers]


def venv_bin(tool):
    return os.path.join(os.path.dirname(PY3), tool)


def granian_argv(port, app_dir, workers=1, threads=8, target='hello:app'):
    return [venv_bin('granian'), '--interface', 'wsgi', '--host', '127.0.0.1', '--port', str(port),
            '--workers', str(workers), '--blocking-threads', str(threads), '--http', '1',
            '--no-access-log', '--working-dir', app_dir, target]


def gunicorn_argv(port, app_dir, target='hello:app', workers=1, threads=8):
    return [venv_bin('gunicorn'), '-w', str(workers), '-k', 'gthread', '--threads', str(threads),
            '-b', '127.0.0.1:%d' % port, '--chdir', app_dir, target]


def uwsgi_argv(port, app_dir, script='hello.py', processes=1, threads=8, router=False):
    # `router`: uWSGI's HTTP router in front (`--http`); `--http11-socket` ties a thread to each
    # keep-alive connection and starves more clients than threads.
    listen = ['--http', '127.0.0.1:%d' % port, '--http-keepalive', '--lazy-apps'] if router \
        else ['--http11-socket', '127.0.0.1:%d' % port]
    return [venv_bin('uwsgi')] + listen + [
        '--chdir', app_dir, '--wsgi-file', script, '--master', '--processes', str(processes),
        '--threads', str(threads), '--die-on-term', '--disable-logging']


def mod_wsgi_argv(port, app_dir, name, script='hello.wsgi', processes=1, threads=8):
    return [MOD_WSGI, 'start-server', os.path.join(app_dir, script), '--host', '127.0.0.1',
            '--port', str(port), '--processes', str(processes), '--threads', str(threads),
            '--max-clients', '64', '--locale', 'C.UTF-8', '--user', MW_USER, '--group', MW_USER,
            '--server-root', os.path.join(W, 'mw-' + name)]


def native_argv(socket_arg, app_dir, script='hello.py', threads=8):
    """The native worker alone: `socket_arg` is a Unix socket path or "tcp:HOST:PORT"."""
    lib, launcher = native_files()
    return [PY3, '-u', launcher, '--native', lib, '--socket', socket_arg, '--threads',
            str(threads), '--script', os.path.join(app_dir, script), '--parent-pid', '0']


_NATIVE_FILES = []


def native_files():
    """The native worker's launcher and library, as this run's wsgimux writes them out (once
    per run: files left by an earlier run may be another build's)."""
    launcher = os.path.join(W, 'wsgimux_worker.py')
    lib = os.path.join(W, 'native-lib')
    if _NATIVE_FILES:
        return lib, launcher
    run = os.path.join(W, 'run-native-files')
    shutil.rmtree(run, ignore_errors=True)
    probe = subprocess.Popen([WSGIMUX, 'serve', '--config', wsgimux_config(
        'native-files', free_port(), app_yaml(PY3, 'native'))],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for line in probe.stdout:
        if line.startswith(b'ready:'):
            break
    native = [os.path.join(run, d) for d in os.listdir(run) if d.startswith('native-')][0]
    shutil.copy(os.path.join(run, 'wsgimux_worker.py'), launcher)
    shutil.rmtree(lib, ignore_errors=True)
    shutil.copytree(native, lib)
    probe.terminate()
    probe.wait()
    _NATIVE_FILES.append(lib)
    return lib, launcher


def rss_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmRSS:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


LATENCY = re.compile(r'^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$', re.M)


def wrk(port, path, seconds=None, connections=None):
    seconds = seconds or SECONDS
    out = subprocess.run(['wrk', '-t1', '-c%d' % (connections or CONNECTIONS), '-d%ds' % seconds,
                          '--latency', '-H', 'Host: bench', 'http://127.0.0.1:%d%s' % (port, path)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         timeout=seconds + 30).stdout.decode()
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
    """One wrk run; CPU µs per request of each role's processes (`cpu_ROLE`), and the part of it
    spent in the kernel (`cpu_ROLE_sys`)."""
    pids = server.pids()
    before = dict((role, cpu_times(p)) for role, p in pids.items())
    r = wrk(server.port, path)
    pids = server.pids()
    n = max(r['requests'], 1)
    for role, p in pids.items():
        user, system = cpu_times(p)
        user0, system0 = before.get(role, (0.0, 0.0))
        r['cpu_' + role] = (user + system - user0 - system0) * 1e6 / n
        r['cpu_%s_sys' % role] = (system - system0) * 1e6 / n
    return r


def med(rs, key):
    values = [r[key] for r in rs if r.get(key) is not None]
    return statistics.median(values) if values else None


