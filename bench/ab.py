#!/usr/bin/env python3
"""A/B of wsgimux builds or settings: the front's CPU per request and req/s, alternating runs.

    python3 bench/ab.py [--python PY] [--path /big] [--rounds 8] [--seconds 3] \
        before=/tmp/old/wsgimux after=target/release/wsgimux \
        one-thread=target/release/wsgimux,WSGIMUX_FRONT_THREADS=1

Each NAME=BINARY[,VAR=VALUE...] serves the same app (native worker, 1 process x 8 threads,
access log off) on its own loopback port, all started at once; wrk -t1 -c32 then hits each in
turn, in alternating order, and the utime+stime of the wsgimux process alone (not its
children) is read from /proc before and after each run. Medians (and the best run) per
variant. On a shared machine whose speed moves 20-30 % between identical runs, only variants
measured in one such interleaved session compare.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

APP = b'''BIG = b"x" * 65536


def application(environ, start_response):
    body = BIG if environ.get("PATH_INFO") == "/big" else b"Hello, world!\\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def cpu_ticks(pid):
    with open('/proc/%d/stat' % pid) as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return int(fields[11]) + int(fields[12])


def wrk(port, path, seconds):
    out = subprocess.run(['wrk', '-t1', '-c32', '-d%ds' % seconds,
                          'http://127.0.0.1:%d%s' % (port, path)],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    total = [line for line in out.splitlines() if 'requests in' in line]
    rps = [line for line in out.splitlines() if line.startswith('Requests/sec')]
    return int(total[0].split()[0]), float(rps[0].split()[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--python', default=shutil.which('python3'))
    ap.add_argument('--path', default='/')
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--seconds', type=int, default=3)
    ap.add_argument('variants', nargs='+', help='NAME=BINARY[,VAR=VALUE...]')
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix='wsgimux-ab-')
    with open(os.path.join(work, 'hello.py'), 'wb') as f:
        f.write(APP)
    servers = []
    try:
        for i, spec in enumerate(args.variants):
            name, rest = spec.split('=', 1)
            binary, *env = rest.split(',')
            port = 18700 + i
            config = os.path.join(work, name + '.yaml')
            with open(config, 'w') as f:
                f.write('listen: "127.0.0.1:%d"\nruntime_dir: %s\naccess_log: off\napps:\n'
                        '  hello:\n    python: %s\n    script: %s\n    worker: native\n'
                        '    threads: 8\n' % (port, os.path.join(work, 'run-' + name),
                                              args.python, os.path.join(work, 'hello.py')))
            environ = dict(os.environ, **dict(e.split('=', 1) for e in env))
            p = subprocess.Popen([os.path.abspath(binary), 'serve', '--config', config],
                                 env=environ, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            servers.append((name, p, port))
        time.sleep(5)
        for _, _, port in servers:
            wrk(port, args.path, 1)
        results = dict((name, []) for name, _, _ in servers)
        tick = os.sysconf('SC_CLK_TCK')
        for r in range(args.rounds):
            for name, p, port in (servers if r % 2 == 0 else servers[::-1]):
                before = cpu_ticks(p.pid)
                total, rps = wrk(port, args.path, args.seconds)
                cpu = (cpu_ticks(p.pid) - before) * 1e6 / tick / max(total, 1)
                results[name].append((cpu, rps))
        for name, runs in results.items():
            print('%-12s front CPU µs/req median %5.1f (best %5.1f)  req/s median %6.0f' % (
                name, statistics.median(c for c, _ in runs), min(c for c, _ in runs),
                statistics.median(r for _, r in runs)))
    finally:
        for _, p, _ in servers:
            p.terminate()
        for _, p, _ in servers:
            p.wait(timeout=15)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
