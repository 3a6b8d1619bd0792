"""Waiting until something is ready (a daemon answers, a sample arrives), with tenacity.

One loop for the test bed, the end-to-end services and the tests: call
``check`` every ``interval`` seconds until it returns something truthy (that
value is returned), an exception from ``check`` counting as "not yet"; call
``fail`` before each try, whose exception stops the wait at once (a daemon that
exited); after ``timeout`` seconds raise ``error(message)`` naming what was
awaited and the last exception ``check`` raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

T = TypeVar("T")


class _Stop(Exception):
    """Carries ``fail``'s exception through tenacity, which must not retry it."""


def wait_until(check: Callable[[], T], *, what: str, timeout: float, interval: float = 0.1,
               fail: Callable[[], object] | None = None,
               error: Callable[[str], Exception] = TimeoutError) -> T:
    def attempt() -> T:
        if fail is not None:
            try:
                fail()
            except Exception as e:
                raise _Stop() from e
        return check()

    retrying = Retrying(
        stop=stop_after_delay(timeout), wait=wait_fixed(interval),
        retry=retry_if_result(lambda r: not r) | retry_if_exception(
            lambda e: not isinstance(e, _Stop)))
    try:
        return retrying(attempt)
    except _Stop as e:
        assert e.__cause__ is not None
        raise e.__cause__ from None
    except RetryError as e:
        last = e.last_attempt.exception() if e.last_attempt.failed else None
        detail = f" (last error: {last!r})" if last is not None else ""
        raise error(f"timed out after {timeout:.0f}s waiting for {what}{detail}") from None
