#!/usr/bin/env python3
"""A/B of wsgimux builds or settings: the front's CPU per request and req/s, alternating runs.

    python3 bench/ab.py [--python PY] [--path /big] [--rounds 8] [--seconds 3] \
        before=/tmp/old/wsgimux after=target/release/wsgimux \
        one-thread=target/release/wsgimux,WSGIMUX_FRONT_THREADS=1

Each NAME=BINARY[,VAR=VALUE...] serves bench.py's app (native worker, 1 process x 8 threads,
access log off) on its own loopback port, all started at once; wrk then hits each in turn, in
alternating order, measured as bench.py measures (common.measure: the wsgimux process alone is
the front). Medians (and the best run) per variant. On a shared machine whose speed moves
20-30 % between identical runs, only variants measured in one such interleaved session compare.
"""
import argparse
import os
import shutil
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--python', default=shutil.which('python3'))
    ap.add_argument('--path', default='/')
    ap.add_argument('--rounds', type=int, default=8)
    ap.add_argument('--seconds', type=int, default=3)
    ap.add_argument('variants', nargs='+', help='NAME=BINARY[,VAR=VALUE...]')
    args = ap.parse_args()
    # common reads its settings when imported.
    os.environ['BENCH_PY3'] = args.python
    os.environ['BENCH_SECONDS'] = str(args.seconds)
    os.environ.setdefault('WSGIMUX', os.path.abspath(args.variants[0].split('=', 1)[1]))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import W, PY3, Server, free_port, wait_http, wrk, measure, wsgimux_config, app_yaml
    from bench import APP

    app_dir = os.path.join(W, 'app')
    os.makedirs(os.path.join(W, 'logs'), exist_ok=True)
    os.makedirs(app_dir, exist_ok=True)
    with open(os.path.join(app_dir, 'hello.py'), 'w') as f:
        f.write(APP)
    servers = []
    try:
        for spec in args.variants:
            name, rest = spec.split('=', 1)
            binary, *env = rest.split(',')
            s = Server('ab-' + name, free_port())
            config = wsgimux_config('ab-' + name, s.port, app_yaml(PY3, 'native'))
            s.start('wsgimux', [os.path.abspath(binary), 'serve', '--config', config],
                    env=dict(os.environ, **dict(e.split('=', 1) for e in env)))
            servers.append((name, s))
        for name, s in servers:
            if not wait_http(s.port, args.path):
                sys.exit('%s did not answer; see %s/logs' % (name, W))
            wrk(s.port, args.path, seconds=1)
        results = dict((name, []) for name, _ in servers)
        for r in range(args.rounds):
            for name, s in (servers if r % 2 == 0 else servers[::-1]):
                results[name].append(measure(s, args.path))
        for name, runs in results.items():
            cpu = [x['cpu_front'] for x in runs]
            print('%-14s front CPU µs/req median %5.1f (best %5.1f; kernel %5.1f)  '
                  'req/s median %6.0f' % (
                      name, statistics.median(cpu), min(cpu),
                      statistics.median(x['cpu_front_sys'] for x in runs),
                      statistics.median(x['rps'] for x in runs)))
    finally:
        for _, s in servers:
            s.stop()


if __name__ == '__main__':
    main()
