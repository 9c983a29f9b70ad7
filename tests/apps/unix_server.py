"""A tiny HTTP server for supervisor tests: listens on the Unix socket argv[1] (bound under a
temporary name and renamed, as wsgimux's workers do), answers every request with one 200 and
closes the connection. With --ignore-term it ignores SIGTERM: a child that outlives the
parent-death signal wsgimux gives its children."""
import os
import signal
import socket
import sys

if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX)
s.bind(path + ".tmp")
s.listen(16)
os.rename(path + ".tmp", path)
while True:
    c, _ = s.accept()
    try:
        # The readiness probe connects and sends nothing.
        if c.recv(65536):
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
    except OSError:
        pass
    c.close()
