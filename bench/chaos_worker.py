"""The Celery app and task of ``bench/chaos.py``, configured from the environment.

Imported by the workers (``celery -A bench.chaos_worker worker``) and by the run itself
(to publish and to read the records). The task is what the package is for: an email
to a real SMTP server, once per intent, under ``OnceTask``; the broker is the run's own
redis-server with ``acks_late``, ``task_reject_on_worker_lost`` and a short
``visibility_timeout``; the store is the run's own PostgreSQL (``DatabaseStore``) or
redis-server (``RedisStore``).

Every completion is appended to a journal (pid, intent), written by the
``lock_completed`` signal right after the record was stored, and so is every completion
that failed because the store was down: the run uses them to tell which deliveries were
made by a process that died, or could not write, before it completed.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import django
from django.conf import settings

ENV = os.environ
STORE = ENV.get("CHAOS_STORE", "database")
BROKER = ENV.get("CHAOS_BROKER", "redis://127.0.0.1:6379/0")
QUEUE = ENV.get("CHAOS_QUEUE", "onceonly-chaos")
LEASE = float(ENV.get("CHAOS_LEASE", "3"))
WORK = float(ENV.get("CHAOS_WORK", "0.5"))
VISIBILITY_TIMEOUT = float(ENV.get("CHAOS_VISIBILITY_TIMEOUT", "8"))
JOURNAL = ENV.get("CHAOS_JOURNAL", "/tmp/onceonly-chaos-journal.log")
SMTP_PORT = int(ENV.get("CHAOS_SMTP_PORT", "1025"))

if not settings.configured:
    databases: dict[str, Any] = {}
    if STORE == "database":
        databases["default"] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "postgres",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": ENV.get("CHAOS_PG_PORT", "5432"),
            "OPTIONS": {"connect_timeout": 2},
        }
    settings.configure(
        DEBUG=False,
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_onceonly"],
        DATABASES=databases,
        CACHES={
            "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
            "onceonly": {
                "BACKEND": "django_redis.cache.RedisCache",
                "LOCATION": ENV.get("CHAOS_REDIS_STORE", "redis://127.0.0.1:6379/1"),
                "KEY_PREFIX": "onceonly-chaos",
                "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 2, "SOCKET_TIMEOUT": 5},
            },
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        LOGGING_CONFIG=None,
        ONCEONLY_STORE=(
            "django_onceonly.stores.DatabaseStore"
            if STORE == "database"
            else "django_onceonly.stores.RedisStore"
        ),
        ONCEONLY_REDIS_CACHE="onceonly",
        ONCEONLY_AFTER_LEASE=ENV.get("CHAOS_AFTER_LEASE", "hold"),
        ONCEONLY_LEASE=LEASE,
    )
    django.setup()

from celery import Celery, signals  # noqa: E402

from django_onceonly.celery import OnceTask  # noqa: E402
from django_onceonly.exceptions import StoreUnavailable  # noqa: E402
from django_onceonly.signals import lock_completed  # noqa: E402

app = Celery("onceonly_chaos", broker=BROKER, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    task_default_routing_key=QUEUE,
    # At least once: a message is acknowledged after its task ran, and a message whose
    # worker process died is given back to the broker, not dropped.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # Publishing (retries, waits for a running duplicate) must outlast a broker restart,
    # or Celery drops the message it was handling (Reject, requeue=False).
    task_publish_retry_policy={
        "max_retries": 60,
        "interval_start": 0.2,
        "interval_step": 0.5,
        "interval_max": 1.0,
    },
    worker_hijack_root_logger=False,
)


class TransientSMTPError(Exception):
    """Nothing was sent (refused, or no connection); retrying is safe."""


class DeliveryOutcomeUnknown(Exception):
    """The server may have accepted the message: the record turns ``unknown``."""


def journal(what: str, intent: str) -> None:
    line = json.dumps({"what": what, "intent": intent, "pid": os.getpid(), "at": time.time()})
    fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _completed(sender: Any, lock: Any, **_: Any) -> None:
    if lock.key.startswith("chaos-"):
        journal("completed", lock.key.removeprefix("chaos-"))


lock_completed.connect(_completed, weak=False)


@signals.task_failure.connect
def _failed(sender: Any = None, exception: Any = None, args: Any = None, **_: Any) -> None:
    # StoreUnavailable fails this task only if complete() failed after the email was sent
    # and the outcome could not be published for later either. The record stays in_progress.
    if isinstance(exception, StoreUnavailable) and args:
        journal("completion-failed", str(args[0]))


class _DeferredCompletions(logging.Filter):
    """Journals a completion the store refused (down) and OnceTask sent on in a message.

    Such a run's lease can end before that message lands: with "reclaim" a waiting
    duplicate may then send again, and the run must be able to name the cause.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if "will be stored by a message" in record.msg and isinstance(record.args, tuple):
            key = str(record.args[2])
            if key.startswith("chaos-"):
                journal("completion-deferred", key.removeprefix("chaos-"))
        return True


logging.getLogger("django_onceonly").addFilter(_DeferredCompletions())


@app.task(
    name="chaos.send_email",
    base=OnceTask,
    bind=True,
    acks_late=True,
    once_key="chaos-{intent}",
    once_lease=LEASE,
    once_ambiguous=(DeliveryOutcomeUnknown,),
    autoretry_for=(TransientSMTPError,),
    # Retries are for outages (store or SMTP down): keep trying.
    max_retries=None,
    default_retry_delay=1,
)
def send_email(self: OnceTask, intent: str) -> dict[str, Any]:
    message = (
        f"From: shop@chaos.example\r\nTo: {intent}@chaos.example\r\nSubject: {intent}\r\n"
        f"X-Chaos-Pid: {os.getpid()}\r\nX-Chaos-Sent-At: {time.time()}\r\n"
        f"X-Idempotency-Key: {self.once.key}\r\n\r\nHello.\r\n"
    )
    try:
        smtp = smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=5)
    except OSError as exc:
        raise TransientSMTPError(str(exc)) from exc
    try:
        smtp.sendmail("shop@chaos.example", [f"{intent}@chaos.example"], message)
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise TransientSMTPError(str(exc)) from exc
        raise
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise DeliveryOutcomeUnknown(str(exc)) from exc
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()
    # What a real task does after the provider accepted: bookkeeping. A process killed
    # here has sent the email and not recorded it.
    time.sleep(WORK)
    return {"pid": os.getpid()}
