"""URLs of the demo project. The long-poll endpoints live under /longpoll/."""

from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("demo/counter/", views.counter, name="demo-counter"),
    path("demo/end-session/", views.end_session, name="demo-end-session"),
    path("longpoll/", include("longpoll_app.urls")),
    path("admin/", admin.site.urls),
]
