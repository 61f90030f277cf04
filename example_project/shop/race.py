"""Fire the same intents from many processes and threads at once, as retries would.

Each process gets its share of every user's attempts, queued so that a user's attempts
sit next to each other: the threads of a process pick them up together, and every
process works through the users in the same order, so the attempts for one user really
do overlap (a webhook redelivered while the first delivery is still sending, a task
redelivered by the broker while it is still running, a double click).

Processes are started with ``spawn`` so that nothing (database connections, locks) is
inherited from the parent; each child sets Django up itself.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

APPROACHES = {
    "naive": "shop.emails.send_welcome_email_naive",
    "check_lock": "shop.emails.send_welcome_email_once",
}


@dataclass
class Report:
    """What the workers themselves say they did (the outbox is counted separately)."""

    attempts: int = 0
    sent: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: Report) -> None:
        self.attempts += other.attempts
        self.sent += other.sent
        self.skipped += other.skipped
        self.errors += other.errors


def plan(user_ids: list[int], attempts: int, processes: int) -> list[list[int]]:
    """Split ``attempts`` per user over the processes, a user's attempts side by side."""
    queues: list[list[int]] = [[] for _ in range(processes)]
    for user_id in user_ids:
        for attempt in range(attempts):
            queues[attempt % processes].append(user_id)
    return [q for q in queues if q]


def _attempt_all(approach: str, user_ids: list[int], threads: int, start: Any) -> Report:
    from django.db import connections
    from django.utils.module_loading import import_string

    send = import_string(APPROACHES[approach])
    work: queue.SimpleQueue[int] = queue.SimpleQueue()
    for user_id in user_ids:
        work.put(user_id)
    report = Report()
    guard = threading.Lock()
    go = threading.Event()

    def worker() -> None:
        go.wait()
        try:
            while True:
                try:
                    user_id = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    sent = send(user_id)
                except Exception as exc:
                    with guard:
                        report.attempts += 1
                        report.errors.append(f"user {user_id}: {type(exc).__name__}: {exc}")
                    continue
                with guard:
                    report.attempts += 1
                    if sent:
                        report.sent += 1
                    else:
                        report.skipped += 1
        finally:
            connections.close_all()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    start.wait(timeout=120)  # every process is ready: fire together
    go.set()
    for thread in pool:
        thread.join()
    return report


def _process_main(
    approach: str, user_ids: list[int], threads: int, start: Any, results: Any
) -> None:
    try:
        import django
        from django.apps import apps

        if not apps.ready:
            django.setup()
        results.put(_attempt_all(approach, user_ids, threads, start))
    except BaseException as exc:
        start.abort()
        results.put(Report(errors=[f"worker process crashed: {type(exc).__name__}: {exc}"]))
        raise


def race(
    approach: str,
    user_ids: list[int],
    *,
    attempts: int,
    processes: int,
    threads: int,
    timeout: float = 600,
) -> Report:
    """Run ``attempts`` attempts per user of ``approach`` over processes x threads."""
    context = multiprocessing.get_context("spawn")
    queues = plan(user_ids, attempts, processes)
    start = context.Barrier(len(queues) + 1)
    results = context.Queue()
    children = [
        context.Process(
            target=_process_main, args=(approach, share, threads, start, results), daemon=True
        )
        for share in queues
    ]
    for child in children:
        child.start()
    total = Report()
    try:
        start.wait(timeout=120)
        deadline = time.monotonic() + timeout
        received = 0
        while received < len(children):
            try:
                total.add(results.get(timeout=1))
                received += 1
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{approach}: workers still running after {timeout}s"
                    ) from None
                dead = [c for c in children if c.exitcode not in (None, 0)]
                if dead and results.empty():
                    raise RuntimeError(
                        f"{approach}: a worker process died (exit code {dead[0].exitcode})"
                    ) from None
    except threading.BrokenBarrierError:
        # A child failed while starting; its report says why.
        try:
            while True:
                total.add(results.get(timeout=1))
        except queue.Empty:
            pass
        raise RuntimeError(
            f"{approach}: worker processes could not start: {'; '.join(total.errors)}"
        ) from None
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    return total
