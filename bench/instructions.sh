#!/usr/bin/env bash
# Instructions per proxied request in the front process, counted by callgrind: steady to about
# 1 % between runs where wall-clock CPU on this shared machine moves ±25 %, so it is the
# figure to compare user-space changes by (BENCHMARKS.md). Kernel time is not in it.
#
#   [ACCESS_LOG=FILE] bench/instructions.sh BINARY [PATH] [PYTHON]
#
# Serves bench.py's app with BINARY (native worker, 8 threads, access log off or to FILE, one
# front thread) under valgrind, warms up with 3 s of wrk, zeroes the counters, runs wrk -t1 -c8 for
# 8 s against PATH (default /), dumps the counters and prints instructions ÷ requests. The
# Python child runs natively (valgrind does not follow it). Needs valgrind and wrk
# (apt-get install valgrind wrk); loopback only, about half a minute.
set -euo pipefail
binary="$(realpath "${1:?usage: bench/instructions.sh BINARY [PATH] [PYTHON]}")"
path="${2:-/}"
python="${3:-$(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.11*/bin/python 2>/dev/null | tail -1)}"
python="${python:-$(command -v python3)}"
export BENCH_HERE="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'kill -INT "$vg" 2>/dev/null; wait "$vg" 2>/dev/null; rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The app and the config as bench.py and ab.py make them (common.py writes under BENCH_DIR).
config="$(BENCH_DIR="$work" WSGIMUX=unused BENCH_PY3="$python" python3 - "$port" <<'PY'
import os, sys
sys.path.insert(0, os.environ['BENCH_HERE'])
from common import W, PY3, wsgimux_config, app_yaml
from bench import APP
os.makedirs(os.path.join(W, 'app'))
with open(os.path.join(W, 'app', 'hello.py'), 'w') as f:
    f.write(APP)
print(wsgimux_config('instructions', int(sys.argv[1]), app_yaml(PY3, 'native'),
                     'access_log: %s\n' % os.environ.get('ACCESS_LOG', 'off')))
PY
)"
WSGIMUX_FRONT_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$binary" serve --config "$config" >"$work/log" 2>&1 &
vg=$!
for _ in $(seq 120); do
  curl -s -m 2 -o /dev/null "http://127.0.0.1:$port$path" && break
  sleep 1
done
wrk -t1 -c8 -d3s "http://127.0.0.1:$port$path" >/dev/null
callgrind_control -z "$vg" >/dev/null 2>&1
requests="$(wrk -t1 -c8 -d8s "http://127.0.0.1:$port$path" | awk '/requests in/ {print $1}')"
callgrind_control -d "$vg" >/dev/null 2>&1
# The dump after zeroing is the first numbered file.
for _ in $(seq 20); do [ -s "$work/cg.out.1" ] && break; sleep 0.5; done
total="$(callgrind_annotate "$work/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')"
echo "$(basename "$binary") $path: $requests requests, $total instructions, $((total / requests)) per request"
