"""The app's URLs. Include them once, e.g. ``path("longpoll/", include("longpoll_app.urls"))``.

``LongpollRouter`` (in asgi.py) answers these paths with the consumers; the
views here only answer when a request reached Django instead (a WSGI server, or
an asgi.py without the router), and say so. ``stats/`` is a plain Django view.
"""

from django.urls import path

from . import views

app_name = "longpoll"

urlpatterns = [
    path("poll/", views.not_routed, name="poll"),
    path("send/", views.not_routed, name="send"),
    path("stats/", views.stats, name="stats"),  # staff only
]
