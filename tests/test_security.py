"""The security review's missing proofs (``docs/security.md`` cites these and the others).

What a malicious API client or a low-privilege admin user tries, and what they get:
markup stored in keys, scopes, results, errors and metadata is shown escaped on every
admin page; a staff user without the view permission sees nothing; a release needs the
change permission and a CSRF token; a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is
refused before anything is parsed or written; an API client cannot pick another scope;
an exception's text or traceback never reaches an API client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from django_onceonly import check_lock
from django_onceonly.models import IdempotencyRecord
from tests.api_fixtures import make_token
from tests.conftest import Backend, backend_params
from tests.factories import IdempotencyRecordFactory

CHANGELIST = "admin:django_onceonly_idempotencyrecord_changelist"
RELEASE = "admin:django_onceonly_idempotencyrecord_release"
SUMMARY = "admin:django_onceonly_idempotencyrecord_summary"
API = "/onceonly/v1"

# What an attacker stores through the API, a webhook payload or a task argument.
SCRIPT = '<script>alert("k")</script>'
IMAGE = "<img src=x onerror=alert(1)>"


def staff(*codenames: str) -> Client:
    user = User.objects.create_user("staff", password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="django_onceonly", codename=codename)
        )
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def hostile_record(**fields: Any) -> IdempotencyRecord:
    record: IdempotencyRecord = IdempotencyRecordFactory.create(
        key=SCRIPT,
        scope=IMAGE,
        status="failed",
        error=f"ValueError: {SCRIPT}",
        metadata={"note": IMAGE, SCRIPT: 1},
        task_name=f"tasks.{IMAGE}",
        task_id='"><script>alert(2)</script>',
        **fields,
    )
    return record


def assert_escaped(html: str, *, shown: bool = True) -> None:
    assert "<script>" not in html
    assert "<img src=x" not in html
    if shown:
        assert "&lt;script&gt;" in html


@pytest.mark.django_db
def test_markup_stored_in_a_record_is_escaped_on_every_admin_page(admin_client: Client) -> None:
    failed = hostile_record()
    completed = IdempotencyRecordFactory.create(
        key=f"{SCRIPT}-done", scope=IMAGE, result={"html": SCRIPT, IMAGE: [SCRIPT]}
    )
    pages = [
        admin_client.get(reverse(CHANGELIST)),
        admin_client.get(reverse(CHANGELIST), {"q": SCRIPT}),
        admin_client.get(reverse(CHANGELIST), {"scope": IMAGE}),
        admin_client.get(
            reverse("admin:django_onceonly_idempotencyrecord_change", args=[failed.pk])
        ),
        admin_client.get(
            reverse("admin:django_onceonly_idempotencyrecord_change", args=[completed.pk])
        ),
        admin_client.get(reverse(RELEASE), {"ids": f"{failed.pk},{completed.pk}"}),
    ]
    for page in pages:
        assert page.status_code == 200, page.request
        assert_escaped(page.content.decode())
    summary = admin_client.get(reverse(SUMMARY))  # counts, and task names when failing
    assert summary.status_code == 200
    assert_escaped(summary.content.decode(), shown=False)
    listing = pages[0].content.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in listing  # the scope is shown, as text


@pytest.mark.django_db
def test_release_messages_and_the_admin_log_keep_markup_as_text(admin_client: Client) -> None:
    record = hostile_record()
    form = {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": "failed",
    }

    done = admin_client.post(reverse(RELEASE), form, follow=True)

    assert IdempotencyRecord.objects.filter(pk=record.pk).count() == 0
    assert_escaped(done.content.decode(), shown=False)
    recent = admin_client.get(reverse("admin:index"))  # "Recent actions" shows the key
    assert "<script>" not in recent.content.decode()


@pytest.mark.django_db
def test_staff_without_the_view_permission_sees_no_intent() -> None:
    record = hostile_record()
    client = staff()

    assert client.get(reverse(CHANGELIST)).status_code == 403
    change = reverse("admin:django_onceonly_idempotencyrecord_change", args=[record.pk])
    assert client.get(change).status_code == 403
    assert client.get(reverse(SUMMARY)).status_code == 403
    assert client.get(reverse(RELEASE), {"ids": record.pk}).status_code == 403


@pytest.mark.django_db
def test_a_view_only_user_can_neither_edit_nor_delete_a_record() -> None:
    record = hostile_record()
    client = staff("view_idempotencyrecord")
    change = reverse("admin:django_onceonly_idempotencyrecord_change", args=[record.pk])
    delete = reverse("admin:django_onceonly_idempotencyrecord_delete", args=[record.pk])

    assert client.get(change).status_code == 200
    csrf = client.cookies["csrftoken"].value
    edited = client.post(change, {"status": "completed", "csrfmiddlewaretoken": csrf})
    assert edited.status_code == 403
    assert client.post(delete, {"post": "yes", "csrfmiddlewaretoken": csrf}).status_code == 403
    bulk = client.post(
        reverse(CHANGELIST),
        {"action": "delete_selected", "_selected_action": [record.pk], "csrfmiddlewaretoken": csrf},
    )
    assert bulk.status_code in (200, 302, 403)
    assert IdempotencyRecord.objects.get(pk=record.pk).status == "failed"


@pytest.mark.django_db
def test_release_without_a_csrf_token_is_refused() -> None:
    record = hostile_record()
    admin = User.objects.create_superuser("root", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    form = {
        "ids": [record.pk],
        f"token-{record.pk}": record.owner_token,
        f"status-{record.pk}": "failed",
    }

    # What a page on another site would make the admin's browser send.
    assert client.post(reverse(RELEASE), form).status_code == 403

    assert IdempotencyRecord.objects.filter(pk=record.pk).exists()


# -- the service API -----------------------------------------------------------------------


def api_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.mark.parametrize("backend", backend_params("sqlite", "redis"), indirect=True)
def test_an_api_client_cannot_choose_its_scope(backend: Backend) -> None:
    alice_token, alice_scope = make_token("alice")
    bob_token, bob_scope = make_token("bob")
    alice, bob = api_client(alice_token), api_client(bob_token)
    owned = alice.post(f"{API}/check-lock", {"key": "charge-1"}, format="json").json()

    # A "scope" field, in the body or the query string, is not how a scope is chosen.
    tried = bob.post(
        f"{API}/check-lock?scope={alice_scope}",
        {"key": "charge-1", "scope": alice_scope},
        format="json",
    )

    assert tried.status_code in (200, 400)
    if tried.status_code == 200:
        assert tried.json()["status"] == "locked"  # bob's own claim, in bob's scope
        bobs = backend.record("charge-1", scope=bob_scope)
        assert bobs is not None
    alices = backend.record("charge-1", scope=alice_scope)
    assert alices is not None
    assert owned["token"].startswith(alices.owner_token)  # the API's token wraps it
    assert alices.status == "in_progress"


@pytest.mark.parametrize("endpoint", ["check-lock", "complete", "release", "fail"])
@pytest.mark.django_db
def test_an_api_body_over_the_upload_limit_is_refused_and_writes_nothing(
    endpoint: str, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    client = api_client(make_token()[0])
    body = {"key": "k", "token": "t", "error": "e", "metadata": {"pad": "x" * 20_000}}

    response = client.generic(
        "POST", f"{API}/{endpoint}", json.dumps(body), content_type="application/json"
    )

    assert response.status_code == 400
    assert b"Traceback" not in response.content
    assert not IdempotencyRecord.objects.exists()


@pytest.mark.django_db
def test_an_unexpected_error_reaches_the_client_as_a_bare_500_without_its_text(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug, not a documented refusal: the client must learn nothing from it.
    import django_onceonly.api.views as views

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"secret detail {SCRIPT}")

    monkeypatch.setattr(views, "check_lock", broken)
    settings.DEBUG = False
    client = api_client(make_token()[0])
    client.raise_request_exception = False

    response = client.post(f"{API}/check-lock", {"key": "k"}, format="json")

    assert response.status_code == 500
    assert b"secret detail" not in response.content
    assert b"Traceback" not in response.content


def test_check_lock_keeps_a_markup_key_exactly_as_given(backend: Backend) -> None:
    check_lock(SCRIPT, scope=IMAGE).complete(SCRIPT)
    again = check_lock(SCRIPT, scope=IMAGE)
    assert again.duplicate
    assert again.result == SCRIPT
    assert check_lock('&lt;script&gt;alert("k")&lt;/script&gt;', scope=IMAGE).locked
