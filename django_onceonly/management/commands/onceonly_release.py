from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...exceptions import InvalidKey
from ...keys import validate_key, validate_scope
from ...stores import get_store


class Command(BaseCommand):
    help = "Release an intent so that it may run again (deletes its record)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("key")
        parser.add_argument("--scope", default="", help="the key's scope (default: empty)")

    def handle(self, *args: Any, key: str, scope: str, **options: Any) -> None:
        try:
            validate_key(key)
            validate_scope(scope)
        except InvalidKey as exc:
            raise CommandError(str(exc)) from exc
        if not get_store().force_release(scope, key):
            raise CommandError(f"No record for key {key!r} in scope {scope!r}.")
        self.stdout.write(f"Released {key!r} (scope {scope!r}).")
