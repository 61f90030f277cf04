from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class OnceOnlyConfig(AppConfig):
    name = "django_onceonly"
    verbose_name = _("Idempotency (django-onceonly)")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .api import checks as api_checks  # noqa: F401  (the service API's own)
        from .outbox import check_outbox_alert  # noqa: F401  (registers it)
