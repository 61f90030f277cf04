from __future__ import annotations

from typing import Any

import django
from django.apps import AppConfig
from django.db.backends.signals import connection_created


def _sqlite_wal(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Django < 5.1 has no "init_command" for SQLite: same pragmas, set per connection.
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        if django.VERSION < (5, 1):
            connection_created.connect(_sqlite_wal, dispatch_uid="shop.sqlite_wal")
