"""The service API over a real server process: races, tenants and raw HTTP.

Each test that takes ``live`` runs once per store against gunicorn (2 workers) on
127.0.0.1, so two requests really are handled by two processes at the same time.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest

from tests.live_server import Live, live, live_servers  # noqa: F401

TRIALS = 40


def race(clients: list[httpx.Client], url: str, key: str) -> list[Any]:
    """Each client posts a check-lock of ``key`` at the same moment, from its own thread."""
    barrier = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)

    def claim(i: int) -> None:
        barrier.wait()
        answers[i] = clients[i].post(url, json={"key": key}).json()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_two_concurrent_check_locks_give_exactly_one_locked(live: Live) -> None:  # noqa: F811
    token, _ = live.token()
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{live.url}/v1/check-lock"
    clients = [httpx.Client(headers=headers, timeout=30) for _ in range(2)]
    try:
        for client in clients:  # warm both connections up, outside the race
            client.get(f"{live.url}/v1/locks/warm-up")
        for trial in range(TRIALS):
            answers = race(clients, url, f"race-{trial}")
            statuses = sorted(answer["status"] for answer in answers)
            assert statuses == ["duplicate", "locked"], (trial, answers)
            duplicate = next(answer for answer in answers if answer["status"] == "duplicate")
            assert "token" not in duplicate
    finally:
        for client in clients:
            client.close()
    print(f"{live.backend.name}: {TRIALS} races of two concurrent check-locks, one locked each")


def test_tenants_are_isolated_over_http(live: Live) -> None:  # noqa: F811
    alice = httpx.Client(headers={"Authorization": f"Bearer {live.token()[0]}"}, timeout=30)
    bob = httpx.Client(headers={"Authorization": f"Bearer {live.token()[0]}"}, timeout=30)
    with alice, bob:
        lock = alice.post(f"{live.url}/v1/check-lock", json={"key": "charge-7"}).json()
        token = lock["token"]
        for endpoint, body in [
            ("complete", {"key": "charge-7", "token": token, "result": 1}),
            ("release", {"key": "charge-7", "token": token}),
            ("fail", {"key": "charge-7", "token": token, "error": "x"}),
        ]:
            theirs = bob.post(f"{live.url}/v1/{endpoint}", json=body)
            absent = bob.post(f"{live.url}/v1/{endpoint}", json={**body, "key": "no-such"})
            assert theirs.status_code == absent.status_code == 404
            assert theirs.content == absent.content
        theirs = bob.get(f"{live.url}/v1/locks/charge-7")
        absent = bob.get(f"{live.url}/v1/locks/no-such")
        assert theirs.status_code == absent.status_code == 404
        assert theirs.content == absent.content
        assert alice.get(f"{live.url}/v1/locks/charge-7").json()["status"] == "in_progress"
        done = alice.post(f"{live.url}/v1/complete", json={"key": "charge-7", "token": token})
        assert done.status_code == 200


@pytest.mark.parametrize(
    ("raw", "status"),
    [(b"not json", 400), (b'{"key": "\\ud800"}', 400), (b"[" * 50_000, 400), (b"{}", 400)],
)
def test_bad_bodies_over_http_are_400(live: Live, raw: bytes, status: int) -> None:  # noqa: F811
    token, _ = live.token()
    response = httpx.post(
        f"{live.url}/v1/check-lock",
        content=raw,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert response.status_code == status, response.text
