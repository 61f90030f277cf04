"""The models: :class:`IdempotencyRecord`, a row per intent, and :class:`OutboxMessage`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import models
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .managers import IdempotencyRecordQuerySet, OutboxMessageQuerySet
from .rules import Status as Status  # re-exported: older code imports it from here
from .rules import lease_is_live


class ExactCharField(models.CharField):  # type: ignore[type-arg]
    """A ``CharField`` compared byte for byte on every database.

    MySQL and MariaDB compare strings case-insensitively and ignore trailing spaces by
    default, which would make ``"Order-1"`` and ``"order-1 "`` one key. The column gets
    a binary, no-pad collation there; other databases already compare exactly. The
    collation is decided per connection, so it never shows up in migrations.
    """

    def db_parameters(self, connection: BaseDatabaseWrapper) -> dict[str, Any]:
        params = super().db_parameters(connection)
        if connection.vendor == "mysql":
            mariadb = getattr(connection, "mysql_is_mariadb", False)
            params["collation"] = "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
        return params


class IdempotencyRecord(models.Model):
    """One intent: the claim on ``(scope, key)``, its status and its stored outcome."""

    id = models.BigAutoField(primary_key=True)
    scope = ExactCharField(_("scope"), max_length=255, blank=True, default="")
    key = ExactCharField(_("key"), max_length=255)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices)
    owner_token = models.CharField(_("owner token"), max_length=64, editable=False)
    fingerprint = models.CharField(_("fingerprint"), max_length=255, blank=True, default="")
    result = models.JSONField(_("result"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True, default="")
    task_name = models.CharField(_("task name"), max_length=255, blank=True, default="")
    task_id = models.CharField(_("task id"), max_length=255, blank=True, default="")
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created"))
    updated_at = models.DateTimeField(_("updated"))
    completed_at = models.DateTimeField(_("completed"), null=True, blank=True)
    lease_expires_at = models.DateTimeField(_("lease ends"), null=True, blank=True)
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    duplicates_blocked = models.PositiveBigIntegerField(_("duplicates blocked"), default=0)
    last_duplicate_at = models.DateTimeField(_("last duplicate"), null=True, blank=True)

    objects = IdempotencyRecordQuerySet.as_manager()

    class Meta:
        verbose_name = _("sent intent")
        verbose_name_plural = _("sent intents")
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="onceonly_scope_key_uniq"),
        ]
        indexes = [
            models.Index(fields=["expires_at"], name="onceonly_expires_idx"),
            models.Index(fields=["status", "-created_at"], name="onceonly_status_created_idx"),
            models.Index(fields=["task_name", "-created_at"], name="onceonly_task_created_idx"),
            models.Index(fields=["-created_at"], name="onceonly_created_idx"),
            # The admin's key search is "starts with": on PostgreSQL only the pattern
            # operator class serves LIKE 'prefix%' (under any collation other than C).
            models.Index(
                fields=["key"], name="onceonly_key_idx", opclasses=["varchar_pattern_ops"]
            ),
        ]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key}" if self.scope else self.key

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    def lease_is_live(self, now: dt.datetime | None = None) -> bool:
        """True when an owner may be running this intent right now (``rules.lease_is_live``)."""
        return lease_is_live(self.status, self.lease_expires_at, now or timezone.now())


class OutboxMessage(models.Model):
    """A task to publish once the transaction that wrote it has committed (the outbox).

    Written by :func:`django_onceonly.outbox.enqueue` in the caller's transaction;
    published right after the commit, or later by the relay; ``published_at`` is set
    once the broker has accepted it. ``payload`` holds the arguments as kombu's JSON
    encodes them, so a message published by the relay carries what the caller passed.
    """

    id = models.BigAutoField(primary_key=True)
    task_name = models.CharField(_("task name"), max_length=255)
    task_id = models.CharField(_("task id"), max_length=255)
    payload = models.TextField(_("arguments"))
    queue = models.CharField(_("queue"), max_length=255, blank=True, default="")
    eta = models.DateTimeField(_("eta"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=timezone.now)
    published_at = models.DateTimeField(_("published"), null=True, blank=True)
    attempts = models.PositiveIntegerField(_("failed publish attempts"), default=0)
    last_attempt_at = models.DateTimeField(_("last failed attempt"), null=True, blank=True)
    last_error = models.TextField(_("last publish error"), blank=True, default="")

    objects = OutboxMessageQuerySet.as_manager()

    class Meta:
        verbose_name = _("outbox message")
        verbose_name_plural = _("outbox messages")
        indexes = [
            # Serves the relay's scan (published_at IS NULL, by id: oldest first) and the
            # purge (published_at <= cutoff). Not a partial index: MySQL and MariaDB have
            # none, and Django warns about one there on every migrate.
            models.Index(fields=["published_at", "id"], name="onceonly_outbox_state_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}]"
