"""System checks of the service API's settings (django_onceonly.E101, E102)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks

from django_onceonly.api.checks import check_api_scope


def ids(settings: Any) -> list[str]:
    return [message.id or "" for message in check_api_scope()]


def test_api_scope_check_is_registered_with_django() -> None:
    assert check_api_scope in checks.registry.registry.get_checks()


def test_unset_or_valid_api_scope_gives_no_errors(settings: Any) -> None:
    assert ids(settings) == []
    settings.ONCEONLY_API_SCOPE = "tests.test_api.team_scope"
    assert ids(settings) == []


@pytest.mark.parametrize("value", ["no_such_module.scope", "tests.test_api.no_such", "nodots", 42])
def test_e101_api_scope_that_does_not_import(settings: Any, value: Any) -> None:
    settings.ONCEONLY_API_SCOPE = value
    assert ids(settings) == ["django_onceonly.E101"]


def test_e102_api_scope_that_is_not_callable(settings: Any) -> None:
    settings.ONCEONLY_API_SCOPE = "tests.test_api.BASE"
    assert ids(settings) == ["django_onceonly.E102"]
