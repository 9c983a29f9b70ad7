"""A Django app that reads an upload the way Django apps do (request.read, bounded by
CONTENT_LENGTH) and says how much arrived and its digest. Runs on Django 1.11 (Python 2.7) and
on current Django alike."""
import hashlib

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY='wsgimux-test-only',
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=['*'],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATA_UPLOAD_MAX_MEMORY_SIZE=None,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402

try:
    from django.urls import re_path as route
except ImportError:  # Django 1.11
    from django.conf.urls import url as route


def upload(request):
    digest = hashlib.sha256()
    length = 0
    while True:
        chunk = request.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        length += len(chunk)
    return JsonResponse({
        'length': length,
        'sha256': digest.hexdigest(),
        'content_length': request.META.get('CONTENT_LENGTH'),
    })


urlpatterns = [route(r'^upload$', upload)]

application = get_wsgi_application()
