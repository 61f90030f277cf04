"""``@once``: run a function once per key and return its first result ever after."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar, overload

from asgiref.sync import sync_to_async

from .exceptions import InProgress, IntentBlocked
from .keys import KeySpec, make_key
from .locks import COMPLETED, IN_PROGRESS, UNKNOWN, Lock, acheck_lock, check_lock
from .rules import ON_ERROR_CHOICES, ONCE_ON_IN_PROGRESS_CHOICES, check_choice
from .rules import seconds as to_seconds

P = ParamSpec("P")
R = TypeVar("R")


def _duplicate_answer(lock: Lock, on_in_progress: str) -> Any:
    if lock.record_status == COMPLETED:
        return lock.result
    if lock.record_status == IN_PROGRESS:
        if on_in_progress == "skip":
            return None
        raise InProgress(lock.key, lock.retry_after, lock.scope)
    raise IntentBlocked(lock.key, lock.record_status or UNKNOWN, lock.error, lock.scope)


@overload
def once(func: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def once(
    func: None = None,
    /,
    *,
    key: KeySpec | None = None,
    name: str | None = None,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    on_error: Literal["release", "fail"] = "release",
    on_in_progress: Literal["raise", "skip"] = "raise",
    transactional: bool = False,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def once(
    func: Callable[P, R] | None = None,
    /,
    *,
    key: KeySpec | None = None,
    name: str | None = None,
    scope: str = "",
    ttl: float | dt.timedelta | None = None,
    lease: float | dt.timedelta | None = None,
    on_error: Literal["release", "fail"] = "release",
    on_in_progress: Literal["raise", "skip"] = "raise",
    transactional: bool = False,
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function once per key and return its first result ever after.

    ``key`` is a template formatted with the bound arguments (``"welcome_{user_id}"``),
    or a callable taking the function's arguments; without it the key is ``name``
    (default ``module.qualname``) plus a hash of the arguments. A call while another is
    running raises ``InProgress`` (or returns ``None`` with ``on_in_progress="skip"``);
    a call after a stored failure raises ``IntentBlocked``. Works on ``async def`` too.
    """
    check_choice("on_error", on_error, ON_ERROR_CHOICES)
    check_choice("on_in_progress", on_in_progress, ONCE_ON_IN_PROGRESS_CHOICES)
    # Checked at decoration, so that a bad span fails when the module is imported.
    if ttl is not None:
        to_seconds(ttl, "ttl")
    if lease is not None:
        to_seconds(lease, "lease")
    options: dict[str, Any] = {
        "scope": scope,
        "ttl": ttl,
        "lease": lease,
        "on_error": on_error,
        "transactional": transactional,
    }

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(function):
            coroutine_function: Callable[..., Awaitable[Any]] = function

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                lock_key = make_key(key, function, args, kwargs, name=name)
                lock = await acheck_lock(lock_key, **options)
                if lock.duplicate:
                    return _duplicate_answer(lock, on_in_progress)
                try:
                    value = await coroutine_function(*args, **kwargs)
                    await lock.acomplete(value)
                except Exception as exc:
                    await sync_to_async(lock.__exit__)(type(exc), exc, exc.__traceback__)
                    raise
                except BaseException as exc:
                    # Cancelled or interrupted: nothing to write (see Lock.__exit__), and
                    # no await, which a cancelled task should not start.
                    lock.__exit__(type(exc), exc, exc.__traceback__)
                    raise
                return value

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            lock_key = make_key(key, function, args, kwargs, name=name)
            with check_lock(lock_key, **options) as lock:
                if lock.duplicate:
                    answer: R = _duplicate_answer(lock, on_in_progress)
                    return answer
                value = function(*args, **kwargs)
                lock.complete(value)
                return value

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
