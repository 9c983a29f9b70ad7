"""A real Django app in one file for the framework tests: reverse(), request.path, forms."""
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY='wsgimux-test-only',
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=['*'],
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    USE_TZ=True,
)

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path, reverse  # noqa: E402


def index(request):
    return JsonResponse({
        'script_name': request.META['SCRIPT_NAME'],
        'path': request.path,
        'path_info': request.path_info,
        'reverse': reverse('item', args=['x y']),
        'absolute': request.build_absolute_uri(),
    })


def item(request, name):
    return HttpResponse('item ' + name)


def echo(request):
    return JsonResponse({'post': request.POST.dict(), 'length': len(request.body)})


urlpatterns = [
    path('', index),
    path('item/<str:name>', item, name='item'),
    path('echo', echo),
]

application = get_wsgi_application()
