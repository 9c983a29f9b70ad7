# -*- coding: utf-8 -*-
"""wsgimux portable worker: one WSGI app served over HTTP/1.1 on a Unix socket.

Also the launcher of the native worker: with --native DIR it loads the app the same way, then
hands it to `wsgimux_native.serve()` (imported from DIR) instead of serving it here.

Stdlib only; runs unchanged on CPython 2.7, 3.6+ and PyPy. wsgimux writes this file into its
runtime directory and starts it once per process of an app:

    python -u wsgimux_worker.py --socket PATH --threads N (--script FILE | --module MOD)
                                --callable NAME [--python-path DIR]... [--processes N]

Threading model: the main thread polls the listening socket and the idle keep-alive connections;
a connection with a request waiting is handed to one of N fixed app threads, which serves one
request (or several, when pipelined) and hands the connection back. So idle connections never
pin a thread, and `threading.local` data belongs to a thread for the whole life of the process.

The front (wsgimux) is the only client: it sends the mount prefix in a `SCRIPT_NAME` header, the
client's address in `X-Forwarded-For` and the scheme in `X-Forwarded-Proto`.
"""
from __future__ import print_function

import argparse
import errno
import hashlib
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types

try:
    from threading import get_ident
except ImportError:  # Python 2
    from thread import get_ident
try:
    import queue
except ImportError:  # Python 2
    import Queue as queue

PY2 = sys.version_info[0] == 2

if PY2:
    from urllib import unquote as _unquote

    def unquote_bytes(b):
        return _unquote(b)

    def wsgi_str(b):
        return b

    def wire(s):
        return s.encode('latin-1') if isinstance(s, unicode) else s  # noqa: F821

    exec('def reraise(tp, value, tb):\n    raise tp, value, tb\n')
else:
    from urllib.parse import unquote_to_bytes as unquote_bytes

    def wsgi_str(b):
        return b.decode('latin-1')

    def wire(s):
        return s.encode('latin-1')

    def reraise(tp, value, tb):
        raise value.with_traceback(tb)

MAX_LINE = 65536  # request line and each header line
MAX_HEADERS = 200
READ_TIMEOUT_S = 60.0  # a request (or its body) that stalls this long is dropped
KEEPALIVE_IDLE_S = 300.0  # longer than the front's pool idle time, so the front closes first
DRAIN_LIMIT = 4 << 20  # unread request body left over: drain up to this much, else close
HOP_BY_HOP = frozenset([
    'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'te',
    'trailer', 'trailers', 'transfer-encoding', 'upgrade',
])
MOUNT_HEADER = b'script_name'
PROTOCOL_HEADER = b'server_protocol'  # the client's HTTP version, from the front
PROTOCOLS = (b'HTTP/1.0', b'HTTP/1.1', b'HTTP/2.0')
REASONS = {400: 'Bad Request', 414: 'URI Too Long', 431: 'Request Header Fields Too Large'}
TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEX_DIGITS = b'0123456789abcdefABCDEF'

APP_NAME = 'app'


def log(msg):
    sys.stderr.write('wsgimux-worker[%d]: %s\n' % (os.getpid(), msg))
    sys.stderr.flush()


class InvalidResponse(ValueError):
    """The app's status or headers break HTTP's rules (the response becomes a 500). The native
    worker raises its own InvalidResponse under the same rules, with the same words."""


_TOKEN = frozenset(TOKEN_CHARS.decode('ascii'))


def _field_text_ok(text):
    """Tabs, spaces, visible ASCII and latin-1: no line break, NUL or other control."""
    for ch in text:
        o = ord(ch)
        if (o < 0x20 and ch != '\t') or o == 0x7f or o > 0xff:
            return False
    return True


def check_status(status):
    if type(status) is not str:
        raise InvalidResponse('status must be a str like "200 OK", not %s'
                              % type(status).__name__)
    if len(status) < 4 or not status[:3].isdigit() or status[3] != ' ' \
            or int(status[:3]) < 100:
        raise InvalidResponse('status %r is not like "200 OK"' % (status,))
    if not _field_text_ok(status[4:]):
        raise InvalidResponse('status %r has a character a reason phrase cannot hold' % (status,))


def check_header(h):
    if type(h) is not tuple or len(h) != 2 or type(h[0]) is not str or type(h[1]) is not str:
        raise InvalidResponse('each header must be a (str, str) tuple, not %r' % (h,))
    name, value = h
    if not name or any(c not in _TOKEN for c in name):
        raise InvalidResponse('header name %r is not a token' % (name,))
    if not _field_text_ok(value):
        raise InvalidResponse('header %r has a character a header value cannot hold' % (name,))


class BadRequest(Exception):
    def __init__(self, status, reason):
        Exception.__init__(self, reason)
        self.status = status


class ClientGone(Exception):
    """The front closed the connection or stopped reading/writing."""


class Conn(object):
    """A socket with a read buffer whose fill level is known (pipelining needs that)."""

    __slots__ = ('sock', 'buf', 'idle_since')

    def __init__(self, sock):
        self.sock = sock
        self.buf = b''
        self.idle_since = time.time()

    def fileno(self):
        return self.sock.fileno()

    def _recv(self, n):
        try:
            return self.sock.recv(n)
        except socket.error as e:
            raise ClientGone(str(e))

    def read(self, n):
        """Up to n bytes; b'' only at end of stream."""
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        return self._recv(min(n, 262144))

    def readline(self, limit):
        """One line with its newline, or up to `limit` bytes of one, or b'' at end of stream."""
        start = 0
        while True:
            i = self.buf.find(b'\n', start, limit)
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            if len(self.buf) >= limit:
                line, self.buf = self.buf[:limit], self.buf[limit:]
                return line
            start = len(self.buf)
            data = self._recv(65536)
            if not data:
                line, self.buf = self.buf, b''
                return line
            self.buf += data

    def send(self, data):
        try:
            self.sock.sendall(data)
        except socket.error as e:
            raise ClientGone(str(e))

    def close(self):
        try:
            self.sock.close()
        except socket.error:
            pass


class Input(object):
    """wsgi.input for a body of known length; reads stop at the body's end."""

    def __init__(self, conn, length):
        self.conn = conn
        self.remaining = length

    def _read1(self, n):
        data = self.conn.read(min(n, self.remaining))
        if not data:
            raise IOError('the request body ended early')
        self.remaining -= len(data)
        return data

    def read(self, size=-1):
        if size is None or size < 0:
            size = self.remaining
        size = min(size, self.remaining)
        parts = []
        while size > 0:
            data = self._read1(size)
            parts.append(data)
            size -= len(data)
        return b''.join(parts)

    def readline(self, size=-1):
        limit = self.remaining if size is None or size < 0 else min(size, self.remaining)
        limit = min(limit, MAX_LINE)  # a line without a newline is returned in pieces
        if limit <= 0:
            return b''
        line = self.conn.readline(limit)
        if not line:
            raise IOError('the request body ended early')
        self.remaining -= len(line)
        return line

    def readlines(self, hint=-1):
        return list(self)

    def __iter__(self):
        return iter(self.readline, b'')

    def finish(self):
        """Consumes what the app left unread; False if the connection cannot be reused."""
        if self.remaining > DRAIN_LIMIT:
            return False
        while self.remaining > 0:
            self._read1(65536)
        return True


class ChunkedInput(Input):
    """wsgi.input for a chunked body, decoded as the app reads (never buffered whole)."""

    def __init__(self, conn):
        Input.__init__(self, conn, 0)
        self.done = False

    def _next_chunk(self):
        line = self.conn.readline(MAX_LINE)
        if not line.endswith(b'\n'):
            raise BadRequest(400, 'bad chunk size line')
        size = line.split(b';', 1)[0].strip()
        if not size or size.strip(HEX_DIGITS):
            raise BadRequest(400, 'bad chunk size %r' % size)
        self.remaining = int(size, 16)
        if self.remaining == 0:
            self.done = True
            while True:  # trailers are read and dropped
                t = self.conn.readline(MAX_LINE)
                if t in (b'\r\n', b'\n'):
                    break
                if not t:
                    raise IOError('the request body ended early')

    def _read1(self, n):
        data = Input._read1(self, n)
        if self.remaining == 0 and self.conn.readline(3) not in (b'\r\n', b'\n'):
            raise BadRequest(400, 'chunk data not followed by CRLF')
        return data

    def _fill(self):
        if self.remaining == 0 and not self.done:
            self._next_chunk()
        return not self.done

    def read(self, size=-1):
        parts = []
        want = -1 if size is None or size < 0 else size
        while want != 0 and self._fill():
            data = self._read1(self.remaining if want < 0 else want)
            parts.append(data)
            if want > 0:
                want -= len(data)
        return b''.join(parts)

    def readline(self, size=-1):
        limit = MAX_LINE if size is None or size < 0 else min(size, MAX_LINE)
        parts = []
        while limit > 0 and self._fill():
            piece = self.conn.readline(min(limit, self.remaining))
            if not piece:
                raise IOError('the request body ended early')
            self.remaining -= len(piece)
            if self.remaining == 0 and self.conn.readline(3) not in (b'\r\n', b'\n'):
                raise BadRequest(400, 'chunk data not followed by CRLF')
            parts.append(piece)
            limit -= len(piece)
            if piece.endswith(b'\n'):
                break
        return b''.join(parts)

    def finish(self):
        drained = 0
        while self._fill():
            drained += len(self._read1(65536))
            if drained > DRAIN_LIMIT:
                return False
        return True


class FileWrapper(object):
    """wsgi.file_wrapper: iterates a file-like object in blocks and closes it."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, 'close'):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    next = __next__


class Response(object):
    """start_response, write() and the framing of one response."""

    def __init__(self, conn, version, keep_alive, is_head):
        self.conn = conn
        self.version = version
        self.is_head = is_head
        self.close_after = not keep_alive
        self.status = None
        self.headers = None
        self.sent = False
        self.chunked = False
        self.length = None  # the Content-Length sent, if any
        self.written = 0
        self.no_body = is_head

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.sent:
                    reraise(*exc_info)
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError('start_response() called again without exc_info')
        check_status(status)
        headers = list(headers)
        for h in headers:
            check_header(h)
        self.status, self.headers = status, headers
        return self.write

    def _head(self, total_len):
        code = int(self.status[:3])
        if code < 200 or code in (204, 304):
            self.no_body = True
        out = [self.version, b' ', wire(self.status), b'\r\n']
        for name, value in self.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                # Framing and connection handling are the server's (PEP 3333); honour a close.
                if lname == 'connection' and 'close' in value.lower():
                    self.close_after = True
                continue
            if lname == 'content-length':
                if not value.strip().isdigit():
                    raise InvalidResponse('header "Content-Length" is not a number: %r'
                                          % (value,))
                self.length = int(value)
            out.extend((wire(name), b': ', wire(value), b'\r\n'))
        if self.length is None and not self.no_body:
            if total_len is not None:
                self.length = total_len
                out.append(('Content-Length: %d\r\n' % total_len).encode('ascii'))
            elif self.is_head:
                pass
            elif self.version == b'HTTP/1.1':
                self.chunked = True
                out.append(b'Transfer-Encoding: chunked\r\n')
            else:
                self.close_after = True
        if self.close_after:
            out.append(b'Connection: close\r\n')
        out.append(b'\r\n')
        return out

    def _body(self, data, out):
        if self.no_body or not data:
            return
        if self.length is not None:
            room = self.length - self.written
            if len(data) > room:
                if room >= 0:
                    log('%s: app sent more than its Content-Length; the rest is dropped'
                        % APP_NAME)
                data = data[:max(room, 0)]
                self.written += 1  # past the length: warn once
        self.written += len(data)
        if self.chunked:
            out.extend((('%x\r\n' % len(data)).encode('ascii'), data, b'\r\n'))
        else:
            out.append(data)

    def write(self, data):
        if self.status is None:
            raise AssertionError('write() before start_response()')
        if not isinstance(data, bytes):
            raise TypeError('response body chunks must be bytes, not %r' % type(data))
        out = []
        if not self.sent:
            out = self._head(None)
            self.sent = True
        self._body(data, out)
        if out:
            self.conn.send(b''.join(out))

    def send_whole(self, body):
        """The common case: the app returned a list; send it in one write with a length."""
        out = self._head(len(body))
        self.sent = True
        self._body(body, out)
        self.conn.send(b''.join(out))

    def finish(self):
        if self.status is None:
            raise AssertionError('the app returned without calling start_response()')
        if not self.sent:
            out = self._head(0)
            self.sent = True
            self.conn.send(b''.join(out))
        elif self.chunked:
            self.conn.send(b'0\r\n\r\n')
        if self.length is not None and not self.no_body and self.written < self.length:
            log('%s: app sent %d of its %d-byte Content-Length; closing the connection'
                % (APP_NAME, self.written, self.length))
            self.close_after = True


def report_app_error(env, resp):
    """One line for a response that breaks HTTP's rules; for an exception, what it was and
    when (after the head went out the client sees a cut connection, not a 500), then its
    traceback. The native worker says the same."""
    tp, value = sys.exc_info()[:2]
    request = '%s %s' % (env['REQUEST_METHOD'], env.get('REQUEST_URI', ''))
    if isinstance(value, InvalidResponse):
        log('%s: invalid response to %s: %s' % (APP_NAME, request, value))
        return
    what = '%s: %s' % (tp.__name__, value)
    if resp.sent:
        log('%s: app raised after the response started (%s): %s\n%s'
            % (APP_NAME, request, what, app_traceback()))
    else:
        log('%s: error in %s: %s\n%s' % (APP_NAME, request, what, app_traceback()))


def app_traceback():
    """The exception being handled, as Python prints it, from the app's first frame: the
    worker's own frames that called into the app are none of the app author's business (the
    native worker calls the app from Rust, so its tracebacks start there too)."""
    etype, value, tb = sys.exc_info()
    here = os.path.abspath(__file__)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) == here:
        tb = tb.tb_next
    return ''.join(traceback.format_exception(etype, value, tb)).rstrip()


def error_response(conn, status, reason):
    body = ('%s\n' % reason).encode('latin-1', 'replace')
    conn.send(('HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n'
               'Connection: close\r\n\r\n' % (status, len(body))).encode('ascii') + body)


def split_host(value, scheme):
    """Host header → (SERVER_NAME, SERVER_PORT)."""
    default = '443' if scheme == 'https' else '80'
    if value.startswith('['):
        end = value.find(']')
        if end > 0:
            rest = value[end + 1:]
            return value[:end + 1], rest[1:] if rest.startswith(':') and rest[1:] else default
    host, sep, port = value.rpartition(':')
    if sep and port.isdigit():
        return host, port
    return value, default


class Worker(object):
    def __init__(self, app, listener, threads, processes, grace_s, parent_pid):
        self.app = app
        self.listener = listener
        self.threads = threads
        self.grace_s = grace_s
        self.parent_pid = parent_pid
        self.work = queue.Queue()
        self.returned = []
        self.lock = threading.Lock()
        self.busy = 0
        self.stopping = False
        self.wake_r, self.wake_w = os.pipe()
        for fd in (self.wake_r, self.wake_w):
            set_nonblocking(fd)
        self.base_env = {
            'wsgi.version': (1, 0),
            'wsgi.errors': sys.stderr,
            'wsgi.multithread': threads > 1,
            'wsgi.multiprocess': processes > 1,
            'wsgi.run_once': False,
            'wsgi.file_wrapper': FileWrapper,
            'wsgi.input_terminated': True,
            'SERVER_SOFTWARE': 'wsgimux-portable',
            # CGI's name for the interface; mod_wsgi and every CGI-derived server set it.
            'GATEWAY_INTERFACE': 'CGI/1.1',
        }

    # -- app threads --

    def app_thread(self):
        while True:
            conn = self.work.get()
            if conn is None:
                return
            with self.lock:
                self.busy += 1
            keep = False
            try:
                keep = self.serve(conn)
            except ClientGone:
                pass
            except Exception:
                log('%s: internal error\n%s' % (APP_NAME, traceback.format_exc()))
            finally:
                with self.lock:
                    self.busy -= 1
                    if keep and not self.stopping:
                        conn.idle_since = time.time()
                        self.returned.append(conn)
                        keep = True
                    else:
                        keep = False
                if keep:
                    try:
                        os.write(self.wake_w, b'x')
                    except OSError:
                        pass
                else:
                    conn.close()

    def serve(self, conn):
        """Serves requests on conn while more are already buffered; True to keep it open."""
        while True:
            if not self.serve_one(conn) or self.stopping:
                return False
            if not conn.buf:
                return True

    def serve_one(self, conn):
        try:
            env, keep_alive, body, version = self.read_request(conn)
        except BadRequest as e:
            error_response(conn, '%d %s' % (e.status, REASONS[e.status]), str(e))
            return False
        if env is None:
            return False
        is_head = env['REQUEST_METHOD'] == 'HEAD'
        # Framed for this hop's version, not the client's (SERVER_PROTOCOL).
        resp = Response(conn, version, keep_alive, is_head)
        result = None
        try:
            result = self.app(env, resp.start_response)
            if type(result) in (list, tuple) and resp.status is not None and not resp.sent:
                resp.send_whole(b''.join(result))
            else:
                for chunk in result:
                    if chunk:
                        resp.write(chunk)
                    elif not isinstance(chunk, bytes):
                        raise TypeError('response body chunks must be bytes, not %r'
                                        % type(chunk))
            resp.finish()
        except ClientGone:
            return False
        except BadRequest as e:
            if not resp.sent:
                error_response(conn, '400 Bad Request', str(e))
            return False
        except BaseException:
            # SystemExit and KeyboardInterrupt from an app are its errors like any other: the
            # request gets its 500, the worker keeps serving.
            report_app_error(env, resp)
            if not resp.sent:
                error_response(conn, '500 Internal Server Error', 'Internal Server Error')
            return False  # a response cut short can only be signalled by closing
        finally:
            close = getattr(result, 'close', None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log('%s: error in close()\n%s' % (APP_NAME, app_traceback()))
        if resp.close_after:
            return False
        try:
            return body.finish()
        except (IOError, BadRequest):
            return False

    def read_request(self, conn):
        line = conn.readline(MAX_LINE + 1)
        while line in (b'\r\n', b'\n'):
            line = conn.readline(MAX_LINE + 1)
        if not line:
            return None, False, None, None
        if len(line) > MAX_LINE:
            raise BadRequest(414, 'request line too long')
        parts = line.rstrip(b'\r\n').split(b' ')
        if len(parts) != 3 or parts[2] not in (b'HTTP/1.1', b'HTTP/1.0'):
            raise BadRequest(400, 'bad request line')
        method, target, version = parts
        headers = []
        while True:
            h = conn.readline(MAX_LINE + 1)
            if h in (b'\r\n', b'\n'):
                break
            if not h:
                return None, False, None, None
            if len(h) > MAX_LINE or len(headers) >= MAX_HEADERS:
                raise BadRequest(431, 'request headers too large')
            name, sep, value = h.partition(b':')
            if not sep or not name or name.translate(None, TOKEN_CHARS):
                raise BadRequest(400, 'bad header line')
            headers.append((name.lower(), value.strip()))

        env = self.base_env.copy()
        mount = b''
        host = None
        length = None
        chunked = False
        conn_tokens = b''
        protocol = version
        for name, value in headers:
            if name == b'content-length':
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise BadRequest(400, 'bad Content-Length')
                length = int(value)
                env['CONTENT_LENGTH'] = wsgi_str(value)
                continue
            if name == b'transfer-encoding':
                codings = [c.strip() for c in value.lower().split(b',')]
                if codings[-1] != b'chunked' or any(c not in (b'chunked',) for c in codings) \
                        or chunked:
                    raise BadRequest(400, 'unsupported Transfer-Encoding')
                chunked = True
                continue
            if name == b'content-type':
                env['CONTENT_TYPE'] = wsgi_str(value)
                continue
            if name == MOUNT_HEADER:
                mount = unquote_bytes(value)
                continue
            if name == PROTOCOL_HEADER:
                if value in PROTOCOLS:
                    protocol = value
                continue
            if b'_' in name:
                continue  # would be indistinguishable from a dash in CGI names: never trusted
            if name == b'connection':
                conn_tokens = value.lower()
            elif name == b'host':
                host = value
            key = 'HTTP_' + wsgi_str(name).upper().replace('-', '_')
            v = wsgi_str(value)
            if key in env:
                env[key] += ('; ' if key == 'HTTP_COOKIE' else ', ') + v
            else:
                env[key] = v
        if chunked and length is not None:
            raise BadRequest(400, 'both Content-Length and Transfer-Encoding')

        path, _, query = target.partition(b'?')
        if path.startswith(b'http://') or path.startswith(b'https://'):
            slash = path.find(b'/', path.find(b'//') + 2)
            path = path[slash:] if slash >= 0 else b'/'
        elif path == b'*':
            path = b''
        decoded = unquote_bytes(path)
        if mount and decoded.startswith(mount) and (len(decoded) == len(mount)
                                                    or decoded[len(mount):len(mount) + 1] == b'/'):
            script_name, path_info = mount, decoded[len(mount):]
        else:
            script_name, path_info = b'', decoded
        scheme = env.get('HTTP_X_FORWARDED_PROTO', 'http').split(',')[-1].strip().lower()
        if scheme not in ('http', 'https'):
            scheme = 'http'
        server_name, server_port = split_host(wsgi_str(host) if host else 'localhost', scheme)
        forwarded_for = env.get('HTTP_X_FORWARDED_FOR', '')
        env.update({
            'REQUEST_METHOD': wsgi_str(method),
            'SCRIPT_NAME': wsgi_str(script_name),
            'PATH_INFO': wsgi_str(path_info),
            'QUERY_STRING': wsgi_str(query),
            'REQUEST_URI': wsgi_str(target),
            'RAW_URI': wsgi_str(target),
            'SERVER_PROTOCOL': wsgi_str(protocol),
            'SERVER_NAME': server_name,
            'SERVER_PORT': server_port,
            'REMOTE_ADDR': forwarded_for.split(',')[-1].strip() if forwarded_for else '',
            'wsgi.url_scheme': scheme,
        })
        if version == b'HTTP/1.1':
            keep_alive = b'close' not in conn_tokens
        else:
            keep_alive = b'keep-alive' in conn_tokens
        if chunked:
            body = ChunkedInput(conn)
        else:
            body = Input(conn, length or 0)
        if env.get('HTTP_EXPECT', '').lower() == '100-continue' and (chunked or length):
            conn.send(b'HTTP/1.1 100 Continue\r\n\r\n')
        env['wsgi.input'] = body
        return env, keep_alive, body, version

    # -- the main thread: accept, watch idle connections, stop --

    def run(self):
        for i in range(self.threads):
            t = threading.Thread(target=self.app_thread, name='wsgimux-app-%d' % i)
            t.daemon = True
            t.start()
        poller = Poller()
        poller.add(self.wake_r)
        poller.add(self.listener.fileno())
        idle = {}
        last_sweep = time.time()
        while not self.stopping:
            try:
                events = poller.poll(1.0)
            except (select.error, IOError, OSError) as e:
                if e.args and e.args[0] == errno.EINTR:
                    continue
                raise
            for fd in events:
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 4096):
                            pass
                    except OSError:
                        pass
                elif fd == self.listener.fileno():
                    self.accept(poller, idle)
                else:
                    conn = idle.pop(fd, None)
                    if conn is not None:
                        poller.remove(fd)
                        self.work.put(conn)
            with self.lock:
                back, self.returned = self.returned, []
            for conn in back:
                idle[conn.fileno()] = conn
                poller.add(conn.fileno())
            now = time.time()
            if now - last_sweep >= 1.0:
                last_sweep = now
                if os.getppid() != self.parent_pid:
                    log('%s: wsgimux (pid %d) is gone; stopping' % (APP_NAME, self.parent_pid))
                    self.stopping = True
                for fd, conn in list(idle.items()):
                    if now - conn.idle_since > KEEPALIVE_IDLE_S:
                        poller.remove(fd)
                        del idle[fd]
                        conn.close()
        self.stop(idle)

    def accept(self, poller, idle):
        while True:
            try:
                sock, _ = self.listener.accept()
            except socket.error as e:
                if e.args and e.args[0] in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                    return
                if e.args and e.args[0] in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                                            errno.ENOMEM, errno.ECONNABORTED):
                    log('%s: accept failed: %s' % (APP_NAME, e))
                    return
                raise
            sock.setblocking(True)
            sock.settimeout(READ_TIMEOUT_S)
            conn = Conn(sock)
            idle[conn.fileno()] = conn
            poller.add(conn.fileno())

    def stop(self, idle):
        """Stop accepting, close idle connections, let requests in flight finish (bounded)."""
        self.listener.close()
        for conn in idle.values():
            conn.close()
        deadline = time.time() + self.grace_s
        while time.time() < deadline:
            with self.lock:
                if self.busy == 0 and self.work.empty():
                    break
            time.sleep(0.05)
        else:
            log('%s: requests still running after %.0fs; exiting anyway'
                % (APP_NAME, self.grace_s))


def set_nonblocking(fd):
    import fcntl
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)


class Poller(object):
    """select.poll where it exists, select.select elsewhere."""

    def __init__(self):
        self.fds = set()
        self.p = select.poll() if hasattr(select, 'poll') else None

    def add(self, fd):
        self.fds.add(fd)
        if self.p is not None:
            self.p.register(fd, select.POLLIN | select.POLLPRI)

    def remove(self, fd):
        self.fds.discard(fd)
        if self.p is not None:
            try:
                self.p.unregister(fd)
            except (KeyError, ValueError):
                pass

    def poll(self, timeout_s):
        if self.p is not None:
            return [fd for fd, _ in self.p.poll(timeout_s * 1000)]
        r, _, _ = select.select(list(self.fds), [], [], timeout_s)
        return r


class Watchdog(object):
    """Logs, once per request, the Python stack of the thread serving a request that has run
    past the app's request_timeout (when the front answers it 504), so a hang names its line —
    as mod_wsgi does at its request-timeout. Both workers: the app is wrapped here."""

    def __init__(self, app, timeout_s, socket_path):
        self.app = app
        self.timeout_s = timeout_s
        self.active = {}  # thread ident -> [started, request line, logged]
        # `wsgimux status --stacks`: the front makes the first file, this answers in the
        # second (written whole, then renamed).
        self.wanted = socket_path + '.stacks-wanted'
        self.answer = socket_path + '.stacks'

    def __call__(self, environ, start_response):
        ident = get_ident()
        query = environ.get('QUERY_STRING')
        line = '%s %s%s%s' % (environ.get('REQUEST_METHOD', '-'), environ.get('SCRIPT_NAME', ''),
                              environ.get('PATH_INFO', ''), '?' + query if query else '')
        self.active[ident] = [time.time(), line, False]
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self.active.pop(ident, None)
            raise
        if type(result) in (list, tuple) or isinstance(result, FileWrapper):
            # Whole already (or a file the worker sends): the app's code is done.
            self.active.pop(ident, None)
            return result
        return Watched(result, self, ident)

    def done(self, ident):
        self.active.pop(ident, None)

    def run(self):
        step = min(0.5, max(0.05, self.timeout_s / 4))
        while True:
            time.sleep(step)
            if os.path.exists(self.wanted):
                self.answer_stacks()
            now = time.time()
            late = [(i, r) for i, r in list(self.active.items())
                    if not r[2] and now - r[0] > self.timeout_s]
            if not late:
                continue
            frames = sys._current_frames()
            for ident, record in late:
                record[2] = True
                frame = frames.get(ident)
                stack = ''.join(traceback.format_stack(frame)) if frame is not None else ''
                log('%s: request %s has run %.1fs, past its request_timeout (%gs); '
                    'the stack of its thread %d (pid %d), most recent call last:\n%s'
                    % (APP_NAME, record[1], now - record[0], self.timeout_s, ident,
                       os.getpid(), stack.rstrip('\n')))

    def answer_stacks(self):
        """Every thread's stack now, the requests they serve named, for the front."""
        try:
            os.unlink(self.wanted)
        except OSError:
            return
        names = dict((t.ident, t.name) for t in threading.enumerate())
        now = time.time()
        parts = []
        for ident, frame in sorted(sys._current_frames().items()):
            if ident == get_ident():
                continue  # this watchdog
            record = self.active.get(ident)
            doing = ('serving %s for %.1fs' % (record[1], now - record[0])) if record else 'idle'
            parts.append('thread %d (%s), %s, most recent call last:\n%s' % (
                ident, names.get(ident, 'not started by Python'), doing,
                ''.join(traceback.format_stack(frame)).rstrip('\n')))
        tmp = self.answer + '.tmp'
        try:
            with open(tmp, 'w') as f:
                f.write('\n\n'.join(parts) + '\n')
            os.rename(tmp, self.answer)
        except (IOError, OSError) as e:
            log('%s: cannot write the stacks to %s: %s' % (APP_NAME, self.answer, e))

    def start(self):
        t = threading.Thread(target=self.run, name='wsgimux-watchdog')
        t.daemon = True
        t.start()


class Watched(object):
    """An app's response iterable; its request ends for the watchdog when it is closed."""

    def __init__(self, result, watchdog, ident):
        self.result = result
        self.watchdog = watchdog
        self.ident = ident

    def __iter__(self):
        return iter(self.result)

    def close(self):
        try:
            close = getattr(self.result, 'close', None)
            if close is not None:
                close()
        finally:
            self.watchdog.done(self.ident)


def load_app(args):
    # `python wsgimux_worker.py` put the runtime dir first on sys.path; the app's dirs go there.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    for p in reversed([os.getcwd()] + list(args.python_path)):
        if p not in sys.path:
            sys.path.insert(0, p)
    if args.script:
        path = os.path.abspath(args.script)
        name = '_wsgimux_script_' + hashlib.md5(path.encode('utf-8')).hexdigest()
        module = types.ModuleType(name)
        module.__file__ = path
        sys.modules[name] = module
        with open(path, 'rb') as f:
            source = f.read()
        code = compile(source, path, 'exec', 0, True)
        exec(code, module.__dict__)
    else:
        __import__(args.module)
        module = sys.modules[args.module]
    obj = module
    for part in args.callable.split('.'):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit('%s: %s has no callable %r' % (
                APP_NAME, args.script or args.module, args.callable))
    if not callable(obj):
        raise SystemExit('%s: %r in %s is not callable' % (
            APP_NAME, args.callable, args.script or args.module))
    return obj


CHECK_MARK = 'wsgimux-check-failed'


def report_load_error(check, etype, value, tb):
    """The app's traceback, without the launcher's frames or importlib's (what the app's author
    needs is where in *their* code it failed); then, for `--check`, one line `wsgimux check`
    reads: the mark, the innermost file and line of the app's own, and the error."""
    here = os.path.abspath(__file__)

    def ours(t):
        name = t.tb_frame.f_code.co_filename
        return os.path.abspath(name) == here or name.startswith('<frozen importlib')
    while tb is not None and ours(tb):
        tb = tb.tb_next
    sys.stderr.write(''.join(traceback.format_exception(etype, value, tb)))
    if not check:
        return
    where_file, where_line = '', ''
    for frame in traceback.extract_tb(tb) if tb is not None else []:
        if not frame[0].startswith('<frozen'):
            where_file, where_line = frame[0], str(frame[1])
    if isinstance(value, SyntaxError) and value.filename:
        where_file, where_line = value.filename, str(value.lineno or '')
    error = ''.join(traceback.format_exception_only(etype, value)).strip().splitlines()[-1]
    sys.stderr.write('%s\t%s\t%s\t%s\n' % (CHECK_MARK, where_file, where_line, error))


def listen_unix(path):
    """Binds under a temporary name and renames, so the path exists only once it accepts."""
    tmp = '%s.%d.tmp' % (path, os.getpid())
    for p in (tmp, path):
        try:
            os.unlink(p)
        except OSError:
            pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(tmp)
    sock.listen(1024)
    sock.setblocking(False)
    os.rename(tmp, path)
    return sock


def serve_native(app, args):
    """Hands the loaded app to the native worker, which serves until SIGTERM."""
    sys.path.insert(0, args.native)
    try:
        import wsgimux_native
    finally:
        # Only the launcher needs it on the path; the app's imports must not see the folder.
        sys.path.remove(args.native)
    # The native worker handles SIGTERM itself; SIGINT raises KeyboardInterrupt as usual.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    wsgimux_native.serve(app, args.socket, threads=max(1, args.threads),
                         processes=args.processes, graceful_timeout=args.graceful_timeout,
                         parent_pid=args.parent_pid, app_name=args.app_name)
    return 0


def main(argv=None):
    global APP_NAME
    parser = argparse.ArgumentParser(description='wsgimux portable worker')
    parser.add_argument('--socket', required=True)
    parser.add_argument('--check', action='store_true',
                        help='import the app and exit (0: it loads; 1: why not, last line '
                             'CHECK_MARK, file, line, error, tab-separated)')
    parser.add_argument('--app-name', default='app')
    parser.add_argument('--script')
    parser.add_argument('--module')
    parser.add_argument('--callable', default='application')
    parser.add_argument('--python-path', action='append', default=[])
    parser.add_argument('--threads', type=int, default=8)
    parser.add_argument('--processes', type=int, default=1)
    parser.add_argument('--graceful-timeout', type=float, default=10.0)
    parser.add_argument('--parent-pid', type=int, default=os.getppid())
    parser.add_argument('--request-timeout', type=float, default=0,
                        help='log the stack of a request running longer (seconds)')
    parser.add_argument('--native', metavar='DIR',
                        help='serve with the native worker (wsgimux_native) found in DIR')
    args = parser.parse_args(argv)
    APP_NAME = args.app_name
    if bool(args.script) == bool(args.module):
        parser.error('give one of --script and --module')

    stop = []

    def on_signal(signum, frame):
        stop.append(signum)
        if worker is not None:
            worker.stopping = True
        elif loading:
            # Still importing the app (which may block for long): nothing to drain.
            raise SystemExit(0)

    worker = None
    loading = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app = load_app(args)
    except SystemExit:
        raise
    except BaseException:
        report_load_error(args.check, *sys.exc_info())
        return 1
    loading = False
    if args.check:
        return 0
    if stop:
        return 0
    if args.request_timeout > 0:
        app = Watchdog(app, args.request_timeout, args.socket)
        app.start()
    if args.native:
        return serve_native(app, args)
    listener = listen_unix(args.socket)
    worker = Worker(app, listener, max(1, args.threads), args.processes,
                    args.graceful_timeout, args.parent_pid)
    worker.stopping = bool(stop)
    try:
        worker.run()
    finally:
        try:
            os.unlink(args.socket)
        except OSError:
            pass
    return 0


if __name__ == '__main__':
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
