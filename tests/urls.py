"""The test project's URLs: the app under ``/longpoll/``, the admin under ``/admin/``."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("longpoll/", include("longpoll_app.urls")),
    path("admin/", admin.site.urls),
]
