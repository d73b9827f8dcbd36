"""The Prometheus endpoint, for a project that wants it (it needs the ``prometheus`` extra).

Include it once, where scrapers look: ``path("metrics", include("longpoll_app.metrics_urls"))``.
Without ``prometheus-client`` installed, importing this URLconf raises
``ImproperlyConfigured`` that names the extra, so ``manage.py check`` and the
first request say so.
"""

from django.urls import path

from . import metrics

app_name = "longpoll_metrics"

urlpatterns = [
    path("", metrics.metrics, name="metrics"),  # a bearer token or a staff session: metrics.md
]
