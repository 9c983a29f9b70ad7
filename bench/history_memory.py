"""What the per-second history costs the front: N `upstream:` apps (no processes: one small
server stands behind them all), one request to each, and the front's RSS before and after.
Run it twice to separate the history from the rest of an app's first request: as built, and
with `status::history::SECONDS` set to 1 (rings of one second).

    python3 bench/history_memory.py target/release/wsgimux [N]
"""

import http.client
import http.server
import os
import re
import subprocess
import sys
import tempfile
import threading
import time


class Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def main():
    binary = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = backend.server_address[1]
    work = tempfile.mkdtemp(prefix="wsgimux-history-")
    lines = ["runtime_dir: %s/run" % work, 'listen: ["127.0.0.1:0"]', "access_log: off", "apps:"]
    for i in range(n):
        lines += ["  a%d:" % i, '    upstream: "http://127.0.0.1:%d"' % port,
                  "    hosts: [a%d.test]" % i]
    config = os.path.join(work, "wsgimux.yaml")
    with open(config, "w") as f:
        f.write("\n".join(lines) + "\n")
    proc = subprocess.Popen([binary, "serve", "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    address = None
    for line in proc.stdout:
        if line.startswith("ready: http://"):
            address = line.split("http://", 1)[1].strip()
            break
    host, front_port = address.rsplit(":", 1)

    def rss_kib():
        status = open("/proc/%d/status" % proc.pid).read()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))

    time.sleep(4)
    before = rss_kib()
    for i in range(n):
        c = http.client.HTTPConnection(host, int(front_port), timeout=10)
        c.request("GET", "/", headers={"Host": "a%d.test" % i})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
        c.close()
    time.sleep(4)  # the sampler's next seconds
    after = rss_kib()
    print("%d apps: front RSS %d KiB before, %d KiB after one request to each: +%.1f MiB"
          % (n, before, after, (after - before) / 1024.0))
    proc.terminate()
    proc.wait()


if __name__ == "__main__":
    main()
