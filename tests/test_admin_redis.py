"""The admin with ``RedisStore``: the table is the audit copy, and Release acts on Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from django_onceonly import LockLost, check_lock
from django_onceonly.models import IdempotencyRecord
from django_onceonly.stores import get_store
from django_onceonly.stores.audit import sync_audit
from tests.conftest import delete_redis_test_keys

CHANGELIST = "admin:django_onceonly_idempotencyrecord_changelist"
RELEASE = "admin:django_onceonly_idempotencyrecord_release"

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services("redis")]


@pytest.fixture(autouse=True)
def redis_store(settings: Any) -> Iterator[None]:
    settings.ONCEONLY_STORE = "django_onceonly.stores.RedisStore"
    settings.ONCEONLY_REDIS_CACHE = settings.REDIS_TEST_CACHE
    settings.ONCEONLY_DATABASE = "default"
    delete_redis_test_keys()
    yield
    delete_redis_test_keys()


def copied(key: str, scope: str = "") -> IdempotencyRecord:
    sync_audit()
    return IdempotencyRecord.objects.get(scope=scope, key=key)


def confirmation(client: Client, record: IdempotencyRecord) -> dict[str, Any]:
    page = client.get(reverse(RELEASE), {"ids": record.pk})
    assert page.status_code == 200
    return {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": record.status,
    }


def messages_of(response: Any) -> str:
    return " ".join(str(m) for m in get_messages(response.wsgi_request))


def test_the_list_says_the_table_is_the_audit_copy(admin_client: Client) -> None:
    check_lock("welcome_email_1").complete("sent")
    copied("welcome_email_1")

    html = admin_client.get(reverse(CHANGELIST)).content.decode()

    assert "this table is its audit copy" in html
    assert "welcome_email_1" in html


def test_release_releases_the_record_in_redis(admin_client: Client) -> None:
    check_lock("pw_reset_1").fail(TimeoutError("provider"), outcome_unknown=True)
    record = copied("pw_reset_1")

    done = admin_client.post(reverse(RELEASE), confirmation(admin_client, record), follow=True)

    assert "Released 1 intent" in messages_of(done)
    assert get_store().get("", "pw_reset_1") is None
    assert not IdempotencyRecord.objects.filter(pk=record.pk).exists()
    assert LogEntry.objects.get().action_flag == DELETION
    assert check_lock("pw_reset_1").locked
    sync_audit()  # the sync agrees: the new claim's row, nothing of the old one
    assert IdempotencyRecord.objects.get(key="pw_reset_1").status == "in_progress"


def test_release_compares_with_redis_not_with_a_stale_copy(admin_client: Client) -> None:
    first = check_lock("charge_1", lease=600)
    first.release()
    check_lock("charge_1").fail("declined")
    record = copied("charge_1")
    form = confirmation(admin_client, record)
    # In Redis the intent is released and claimed again; the copy has not caught up.
    get_store().force_release("", "charge_1")
    retry = check_lock("charge_1", lease=600)

    done = admin_client.post(reverse(RELEASE), form, follow=True)

    assert "changed after you looked" in messages_of(done)
    current = get_store().get("", "charge_1")
    assert current is not None
    assert current.owner_token == retry.token
    assert not LogEntry.objects.exists()
    retry.complete("charged once")


def test_a_live_lease_in_redis_needs_the_extra_box(admin_client: Client) -> None:
    owner = check_lock("charge_2", lease=600)
    record = copied("charge_2")
    form = confirmation(admin_client, record)

    refused = admin_client.post(reverse(RELEASE), form, follow=True)

    assert "left alone: its lease is live" in messages_of(refused)
    assert get_store().get("", "charge_2") is not None

    admin_client.post(reverse(RELEASE), {**form, "confirm_live": "yes"})

    assert get_store().get("", "charge_2") is None
    with pytest.raises(LockLost):
        owner.complete("late")


def test_release_is_one_step_in_redis_never_a_read_then_a_delete(
    admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A read then force_release left a window in which a claim landing between the
    # two was released too; the store's release_if_unchanged is one Lua script (its
    # race with a takeover is in tests/test_store_contract.py).
    from django_onceonly.admin import release as admin_release

    store = get_store()

    class OneStepOnly:
        def __getattr__(self, name: str) -> Any:
            if name in ("get", "force_release"):
                raise AssertionError(f"the admin's release called store.{name}()")
            return getattr(store, name)

    check_lock("pw_reset_2").fail(TimeoutError("provider"), outcome_unknown=True)
    record = copied("pw_reset_2")
    form = confirmation(admin_client, record)
    monkeypatch.setattr(admin_release, "get_store", OneStepOnly)

    done = admin_client.post(reverse(RELEASE), form, follow=True)

    assert "Released 1 intent" in messages_of(done)
    assert store.get("", "pw_reset_2") is None
    assert not IdempotencyRecord.objects.filter(pk=record.pk).exists()
