# ruff: noqa: SIM300 (conf.ONCEONLY_X on the left reads as a constant to ruff; it is not)
"""``conf`` reads the settings live: whatever changes them, the next read sees it.

``conf`` remembers which ``ONCEONLY_*`` names the settings leave undefined (reading one
costs Django an exception), so these tests change a setting every way Django allows
right after it was read as undefined.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.test import override_settings

from django_onceonly.conf import DEFAULTS, conf


def default(name: str) -> Any:
    return DEFAULTS[name]


def test_an_undefined_setting_reads_as_its_default_every_time() -> None:
    assert not hasattr(django_settings, "ONCEONLY_LEASE")
    assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
    assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")


def test_assigning_a_setting_read_as_undefined_is_seen_at_the_next_read() -> None:
    assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
    django_settings.ONCEONLY_LEASE = 42
    try:
        assert conf.ONCEONLY_LEASE == 42
    finally:
        del django_settings.ONCEONLY_LEASE
    assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")


def test_override_settings_is_seen_when_it_starts_and_when_it_ends() -> None:
    assert conf.ONCEONLY_TTL == default("ONCEONLY_TTL")
    with override_settings(ONCEONLY_TTL=7):
        assert conf.ONCEONLY_TTL == 7
        assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
        with override_settings(ONCEONLY_LEASE=9):
            assert conf.ONCEONLY_LEASE == 9
            assert conf.ONCEONLY_TTL == 7
        assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
    assert conf.ONCEONLY_TTL == default("ONCEONLY_TTL")


def test_assigning_and_deleting_inside_an_override_are_seen(settings: Any) -> None:
    # pytest-django's `settings` fixture overrides; plain assignment happens inside it.
    assert conf.ONCEONLY_AFTER_LEASE == default("ONCEONLY_AFTER_LEASE")
    settings.ONCEONLY_AFTER_LEASE = "hold"
    assert conf.ONCEONLY_AFTER_LEASE == "hold"
    django_settings.ONCEONLY_MAX_RESULT_BYTES = 10
    assert conf.ONCEONLY_MAX_RESULT_BYTES == 10
    del django_settings.ONCEONLY_MAX_RESULT_BYTES
    assert conf.ONCEONLY_MAX_RESULT_BYTES == default("ONCEONLY_MAX_RESULT_BYTES")
    django_settings.ONCEONLY_MAX_RESULT_BYTES = 20
    assert conf.ONCEONLY_MAX_RESULT_BYTES == 20


def test_a_setting_inherited_by_an_override_then_deleted_and_assigned_is_seen() -> None:
    with override_settings(ONCEONLY_LEASE=5), override_settings(ONCEONLY_TTL=6):
        assert conf.ONCEONLY_LEASE == 5  # defined under the inner override
        del django_settings.ONCEONLY_LEASE
        assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
        django_settings.ONCEONLY_LEASE = 8
        assert conf.ONCEONLY_LEASE == 8
    assert conf.ONCEONLY_LEASE == default("ONCEONLY_LEASE")
