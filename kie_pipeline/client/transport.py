"""Turning HTTP responses of the Kie API into data or typed errors, and the retry policy.

Kie may report an error as an HTTP status or as HTTP 200 with a body ``code``; both go through
:func:`unwrap_response`. Retries use tenacity: exponential backoff with jitter on retryable errors,
or exactly the server's ``Retry-After`` when it sends one.

Requests that must not run twice (createTask: Kie has no idempotency key and charges per task) are
mapped with ``idempotent=False``: every failure after which Kie may have executed the request becomes
:class:`KieCreateUncertainError`, which is never retried. Only failures that prove Kie did not run it
(no connection was made, or Kie answered with an error code) stay retryable.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from .errors import KieCreateUncertainError, KieError, KieProtocolError, KieTransportError, error_for_code
from .options import RetryPolicy

#: httpx errors raised before the request could reach the server: resending cannot run it twice.
NOT_SENT_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
#: Gateway timeouts (504; Cloudflare's 524): a proxy in front of Kie stopped waiting for Kie's
#: answer, so Kie may still have run the request. Only when the body is not Kie's own JSON.
GATEWAY_TIMEOUTS = frozenset({504, 524})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def unwrap_response(response: httpx.Response, endpoint: str, *, idempotent: bool = True) -> Any:
    """Return the ``data`` of a successful Kie response; raise the typed error otherwise.

    With ``idempotent=False`` an HTTP 2xx whose body cannot be understood raises
    :class:`KieCreateUncertainError` (Kie may have acted on the request) instead of the retryable
    :class:`KieProtocolError`; error codes from Kie are mapped the same way in both cases.
    """
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if response.status_code >= 400:
        code = response.status_code
        msg = None
        kie_body = isinstance(body, dict) and "code" in body
        if not idempotent and code in GATEWAY_TIMEOUTS and not kie_body:
            raise KieCreateUncertainError(f"HTTP {code} from a gateway", endpoint=endpoint)
        if isinstance(body, dict):
            msg = body.get("msg") or body.get("message")
            if isinstance(body.get("code"), int) and body["code"] >= 400:
                code = body["code"]
        raise error_for_code(code, msg or response.reason_phrase, endpoint=endpoint, retry_after=retry_after)
    if not isinstance(body, dict):
        if not idempotent:
            raise KieCreateUncertainError(f"unreadable HTTP {response.status_code} answer", endpoint=endpoint)
        raise KieProtocolError(
            f"Kie {endpoint} answered HTTP {response.status_code} with a body that is not JSON."
        )
    code = body.get("code", 200)
    try:
        code = int(code)
    except (TypeError, ValueError) as exc:
        if not idempotent:
            raise KieCreateUncertainError(f"non-numeric code {code!r}", endpoint=endpoint) from None
        raise KieProtocolError(f"Kie {endpoint} answered with a non-numeric code {code!r}.") from exc
    if code != 200:
        raise error_for_code(code, body.get("msg"), endpoint=endpoint, retry_after=retry_after)
    return body.get("data")


def created_task_id(data: Any, endpoint: str = "createTask") -> str:
    """The ``taskId`` of a successful createTask answer.

    A success without a task id is ambiguous (Kie said it worked, but we cannot find the task), so it
    raises :class:`KieCreateUncertainError` rather than anything that would be retried.
    """
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if not task_id:
        raise KieCreateUncertainError("success without a taskId", endpoint=endpoint)
    return str(task_id)


def transport_error(exc: httpx.HTTPError, endpoint: str, *, idempotent: bool = True) -> KieError:
    """Map an httpx error to a Kie error, without its request (whose headers hold the API key).

    With ``idempotent=False`` only errors raised before anything was sent (:data:`NOT_SENT_ERRORS`)
    stay a retryable :class:`KieTransportError`; a read or write timeout, a dropped connection or an
    unreadable answer becomes :class:`KieCreateUncertainError`.
    """
    kind = type(exc).__name__
    if not idempotent and not isinstance(exc, NOT_SENT_ERRORS):
        return KieCreateUncertainError(kind, endpoint=endpoint)
    return KieTransportError(f"Kie {endpoint} failed: {kind}.")


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, KieError) and exc.retryable


class _RetryAfterOrBackoff:
    """Wait what the server asked for (Retry-After), else exponential backoff with full jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._backoff = wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)
        self._maximum = maximum

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            # A little jitter so that many waiters do not come back in the same instant.
            return min(self._maximum, retry_after) + random.uniform(0, 0.25)
        return self._backoff(state)


def retrying(policy: RetryPolicy, on_retry: Callable[[BaseException, int, float], None]) -> AsyncRetrying:
    """The retry policy of every request: retryable errors only, bounded attempts, reraise at the end.
    ``on_retry(error, attempt, sleep)`` is told of each retry before its sleep."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None:
            sleep = state.next_action.sleep if state.next_action is not None else 0.0
            on_retry(exc, state.attempt_number, sleep)

    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        stop=stop_after_attempt(policy.max_attempts),
        wait=_RetryAfterOrBackoff(policy.backoff_initial_s, policy.backoff_max_s),
        before_sleep=before_sleep,
        reraise=True,
    )


def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): stable hashes and small request bodies."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
