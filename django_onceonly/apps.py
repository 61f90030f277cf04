from __future__ import annotations

from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class OnceOnlyConfig(AppConfig):
    name = "django_onceonly"
    verbose_name = _("Idempotency (django-onceonly)")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .outbox import check_outbox_alert  # noqa: F401  (registers it)

        if apps.is_installed("django.contrib.admin"):
            from . import outbox_admin  # noqa: F401  (registers OutboxMessageAdmin)
