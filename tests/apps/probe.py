# -*- coding: utf-8 -*-
"""The test app: runs unchanged on Python 2.7, 3.x and PyPy.

Each path answers something a test can check: which interpreter and process served it, what
the environ holds, how much body arrived, and how errors behave.
"""
import hashlib
import io
import os
import platform
import signal
import sys
import threading
import time

try:
    from urlparse import parse_qs  # Python 2
except ImportError:
    from urllib.parse import parse_qs

IMPORTED_AT = time.time()
if os.environ.get('PROBE_SLEEP_IMPORT'):
    time.sleep(float(os.environ['PROBE_SLEEP_IMPORT']))
if os.environ.get('PROBE_FAIL_IMPORT'):
    raise RuntimeError('probe was told to fail at import')

_local = threading.local()
_signals = [0]


def _on_usr1(signum, frame):
    _signals[0] += 1


if hasattr(signal, 'SIGUSR1') and threading.current_thread().name == 'MainThread':
    signal.signal(signal.SIGUSR1, _on_usr1)
_closed = [0]


class Closing(object):
    """A response iterable whose close() the server must call."""

    def __init__(self, parts):
        self.parts = parts

    def __iter__(self):
        return iter(self.parts)

    def close(self):
        _closed[0] += 1

ENV_KEYS = ('REQUEST_METHOD', 'SCRIPT_NAME', 'PATH_INFO', 'QUERY_STRING', 'SERVER_NAME',
            'SERVER_PORT', 'SERVER_PROTOCOL', 'REMOTE_ADDR', 'CONTENT_TYPE', 'CONTENT_LENGTH',
            'HTTP_HOST', 'HTTP_COOKIE', 'HTTP_X_FORWARDED_FOR', 'HTTP_X_FORWARDED_PROTO',
            'HTTP_X_FORWARDED_HOST', 'HTTP_X_CUSTOM', 'SERVER_SOFTWARE', 'GATEWAY_INTERFACE',
            'wsgi.url_scheme')


def wire(s):
    """A native str as the bytes it stands for (PEP 3333: latin-1 on Python 3)."""
    return s if isinstance(s, bytes) else s.encode('latin-1')


def query(environ):
    return dict((k, v[0]) for k, v in parse_qs(environ.get('QUERY_STRING', '')).items())


def app(environ, start_response):
    path = environ.get('PATH_INFO', '')
    q = query(environ)
    headers = [('Content-Type', 'text/plain')]
    if path == '/ver':
        body = ('%s %s %s\n' % (platform.python_implementation(), platform.python_version(),
                                sys.executable)).encode('utf-8')
    elif path == '/prefix':
        body = (sys.prefix + '\n').encode('utf-8')
    elif path == '/pid':
        body = ('%d\n' % os.getpid()).encode('ascii')
    elif '/env' in path:
        lines = []
        for k in ENV_KEYS:
            if k in environ:
                v = environ[k]
                lines.append(wire(k) + b'=' + wire(v) + b' ' + wire(type(v).__name__))
        lines.append(b'wsgi.input_terminated=' + repr(environ.get('wsgi.input_terminated')).encode())
        lines.append(b'wsgi.multithread=' + repr(environ.get('wsgi.multithread')).encode())
        lines.append(b'wsgi.multiprocess=' + repr(environ.get('wsgi.multiprocess')).encode())
        body = b'\n'.join(lines) + b'\n'
    elif path == '/getenv':
        body = (os.environ.get(q.get('name', ''), '<unset>') + '\n').encode('utf-8')
    elif path == '/upload':
        inp = environ['wsgi.input']
        digest = hashlib.md5()
        count = 0
        while True:
            chunk = inp.read(65536)
            if not chunk:
                break
            count += len(chunk)
            digest.update(chunk)
        body = ('count=%d md5=%s\n' % (count, digest.hexdigest())).encode('ascii')
    elif path == '/lines':
        inp = environ['wsgi.input']
        body = ('lines=%d\n' % len(list(inp))).encode('ascii')
    elif path == '/download':
        n = int(q.get('n', '0'))
        block = b'x' * 65536

        def gen():
            left = n
            while left > 0:
                piece = block[:min(left, len(block))]
                left -= len(piece)
                yield piece
        start_response('200 OK', [('Content-Type', 'application/octet-stream')])
        return gen()
    elif path == '/write':
        write = start_response('200 OK', headers)
        write(b'written-')
        return [b'then-returned\n']
    elif path == '/filewrapper':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return environ['wsgi.file_wrapper'](io.BytesIO(b'wrapped file body\n'), 4)
    elif path == '/excinfo':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        try:
            raise ValueError('changed my mind')
        except ValueError:
            start_response('503 Service Unavailable', [('Content-Type', 'text/plain')],
                           sys.exc_info())
        body = b'replaced\n'
        return [body]
    elif path == '/excinfo_late':
        # exc_info after the headers went out: start_response must re-raise (PEP 3333), and the
        # server can only cut the response short.
        start_response('200 OK', [('Content-Type', 'text/plain')])

        def late():
            yield b'partial\n'
            try:
                raise ValueError('too late to change the status')
            except ValueError:
                start_response('500 Internal Server Error', [('Content-Type', 'text/plain')],
                               sys.exc_info())
            yield b'never sent\n'
        return late()
    elif path == '/readsome':
        # Reads only part of the body: the server must cope with the rest (keep-alive).
        first = environ['wsgi.input'].read(int(q.get('n', '5')))
        body = b'first=' + first + b'\n'
    elif path == '/signals':
        body = ('usr1=%d\n' % _signals[0]).encode('ascii')
    elif path == '/fork':
        # A forked child (what multiprocessing does) must stop on SIGTERM like any process.
        child = os.fork()
        if child == 0:
            try:
                time.sleep(60)
            finally:
                os._exit(0)
        threading.Thread(target=os.waitpid, args=(child, 0)).start()
        body = ('%d\n' % child).encode('ascii')
    elif path == '/closing':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return Closing([b'a', b'b\n'])
    elif path == '/closed':
        body = ('closed=%d\n' % _closed[0]).encode('ascii')
    elif path == '/slow':
        time.sleep(float(q.get('s', '1')))
        body = b'slept\n'
    elif path == '/sse':
        # Server-Sent Events: `n` events, `gap` seconds of silence before each after the first.
        gap, n = float(q.get('gap', '1')), int(q.get('n', '2'))

        def events():
            for i in range(n):
                if i:
                    time.sleep(gap)
                yield ('data: event %d\n\n' % i).encode('ascii')
        start_response('200 OK', [('Content-Type', 'text/event-stream'),
                                  ('Cache-Control', 'no-cache')])
        return events()
    elif path == '/badlength':
        # A body that disagrees with the app's own Content-Length: `sent` bytes for `declared`,
        # as a list, a generator of 1000-byte pieces, or a file wrapper.
        sent, declared = int(q.get('sent', '10')), int(q.get('declared', '100'))
        data = (b'0123456789' * (sent // 10 + 1))[:sent]
        start_response('200 OK', [('Content-Type', 'text/plain'),
                                  ('Content-Length', str(declared))])
        how = q.get('as', 'list')
        if how == 'list':
            return [data]
        if how == 'file':
            return environ['wsgi.file_wrapper'](io.BytesIO(data), 1000)
        return (data[i:i + 1000] for i in range(0, len(data), 1000))
    elif path == '/badhead':
        # A status or header that breaks HTTP's rules; both workers must refuse it alike.
        status, name, value = '200 OK', 'X-Fine', 'yes'
        what = q.get('what', '')
        if what == 'status-crlf':
            status = '200 OK\r\nX-Injected: yes'
        elif what == 'status-nul':
            status = '200 O\x00K'
        elif what == 'status-code':
            status = '2000 OK'
        elif what == 'name-space':
            name = 'X Bad'
        elif what == 'name-crlf':
            name = 'X-A\r\nX-Injected'
        elif what == 'value-crlf':
            value = 'yes\r\nX-Injected: yes'
        elif what == 'value-nul':
            value = 'y\x00es'
        start_response(status, [('Content-Type', 'text/plain'), (name, value)])
        return [b'should not be sent\n']
    elif path == '/raise_after':
        def chunks():
            yield b'first chunk\n'
            raise RuntimeError('failed after the first chunk')
        start_response('200 OK', [('Content-Type', 'text/plain')])
        return chunks()
    elif path == '/exit':
        if q.get('how') == 'interrupt':
            raise KeyboardInterrupt()
        raise SystemExit(3)
    elif path == '/boom':
        raise RuntimeError('boom for the test')
    elif path == '/threadlocal':
        _local.n = getattr(_local, 'n', 0) + 1
        body = ('%s %d\n' % (threading.current_thread().name, _local.n)).encode('ascii')
    else:
        body = b'probe PATH_INFO=' + wire(path) + b' SCRIPT_NAME=' + wire(environ['SCRIPT_NAME']) + b'\n'
    headers.append(('Content-Length', str(len(body))))
    start_response('200 OK', headers)
    return [body]


application = app


def _validated():
    from wsgiref.validate import validator
    return validator(app)


validated = _validated()
