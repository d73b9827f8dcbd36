"""ASGI entry point: the long-poll consumer beside Django's own handler.

Serve it with ``manage.py runserver`` (daphne), ``daphne project.asgi:application``
or ``uvicorn project.asgi:application``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
# Set up Django (and its app registry) before importing anything that uses models.
django_asgi_app = get_asgi_application()

from longpoll_app.routing import longpoll_router  # noqa: E402

application = longpoll_router(django_asgi_app)
