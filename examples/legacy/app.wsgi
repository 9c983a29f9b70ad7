# A Python 2 app (print statement and all): runs under the portable worker on CPython 2.7.
import sys


def application(environ, start_response):
    print >> environ['wsgi.errors'], "legacy app called for", environ['PATH_INFO']
    body = "Hello from Python %s\n" % sys.version.split()[0]
    start_response('200 OK', [('Content-Type', 'text/plain'),
                              ('Content-Length', str(len(body)))])
    return [body]
