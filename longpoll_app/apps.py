from django.apps import AppConfig


class LongpollAppConfig(AppConfig):
    name = "longpoll_app"
    verbose_name = "Long-poll channels"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, receivers  # noqa: F401  (registers checks and receivers)

        receivers.connect()
