"""CMMS work orders through a webhook: an HTTP POST of JSON per alert change, retried with
exponential backoff, never delivered twice.

Each work order carries its alert state's idempotency key (``outbound.state.alert_key``) in
the ``Idempotency-Key`` header and in the body.  The deliverer sends a key only while the
``deliveries`` table has no ``delivered`` row for it; every attempt is committed there as it
ends, so neither a retry nor a restart sends a delivered key again.  (A crash in the instant
between the CMMS's 2xx and that commit makes the next start send it once more, with the same
key: a CMMS that honours the header drops it.)

Outcomes: a 2xx is ``delivered``; a connection error, a timeout, 408, 425, 429 or 5xx is
``retry`` (``failed`` on the last allowed attempt); any other status is ``failed`` at once
(the same request would be refused again).  A ``Retry-After`` in seconds is honoured, capped
at the configured maximum backoff.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from outbound.deliveries import DELIVERED, FAILED, RETRY, DeliveryLog

__all__ = ["WorkOrder", "WebhookDeliverer", "TARGET"]

log = logging.getLogger(__name__)

TARGET = "webhook"
RETRYABLE = {408, 425, 429}


@dataclass(frozen=True)
class WorkOrder:
    key: str
    alert_id: str
    asset_id: str
    body: dict[str, Any]


class WebhookDeliverer:
    """Delivers ``WorkOrder``s to ``url`` in order, one at a time, on its own thread."""

    def __init__(
        self,
        url: str,
        log_: DeliveryLog,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        headers: dict[str, str] | None = None,
    ):
        self.url, self.deliveries = url, log_
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.headers = headers or {}
        self.delivered, self.made = log_.attempts(TARGET)
        self._queue: queue.Queue[WorkOrder | None] = queue.Queue()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_spec(cls, spec: Any, log_: DeliveryLog) -> WebhookDeliverer:
        headers = {h: os.environ.get(var, "") for h, var in spec.headers_env.items()}
        return cls(
            spec.url,
            log_,
            timeout_s=spec.timeout_s,
            max_attempts=spec.max_attempts,
            backoff_s=spec.backoff_s,
            max_backoff_s=spec.max_backoff_s,
            headers=headers,
        )

    # -- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbound-webhook", daemon=True)
        self._thread.start()

    def submit(self, order: WorkOrder) -> bool:
        """Queue ``order`` unless its key was delivered already; True when queued."""
        if order.key in self.delivered:
            return False
        self._idle.clear()
        self._queue.put(order)
        return True

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued order has been delivered or given up."""
        return self._idle.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            order = self._queue.get()
            if order is None:
                break
            try:
                self._deliver(order)
            except Exception:  # the thread must outlive one bad order
                log.exception("work order %s: delivery crashed", order.key)
            if self._queue.empty():
                self._idle.set()

    # -- one work order ---------------------------------------------------------------------
    def _deliver(self, order: WorkOrder) -> None:
        if order.key in self.delivered:
            return
        body = json.dumps(order.body, default=str).encode()
        while not self._stop.is_set():
            attempt = self.made.get(order.key, 0) + 1
            self.made[order.key] = attempt
            code, error, wait_s = self._post(order.key, body)
            if code is not None and 200 <= code < 300:
                status = DELIVERED
            elif (code is None or code in RETRYABLE or code >= 500) and (
                attempt < self.max_attempts
            ):
                status = RETRY
            else:
                status = FAILED
            self.deliveries.write_now(
                self.deliveries.row(
                    TARGET,
                    order.key,
                    status,
                    alert_id=order.alert_id,
                    asset_id=order.asset_id,
                    attempt=attempt,
                    code=code,
                    error=error,
                )
            )
            if status == DELIVERED:
                self.delivered.add(order.key)
                log.info("work order %s delivered (attempt %d)", order.key, attempt)
                return
            if status == FAILED:
                log.error(
                    "work order %s not delivered after %d attempt(s): %s", order.key, attempt, error
                )
                return
            delay = wait_s if wait_s is not None else self.backoff_s * 2 ** (attempt - 1)
            log.warning(
                "work order %s attempt %d failed (%s); retrying in %.2f s",
                order.key,
                attempt,
                error,
                min(delay, self.max_backoff_s),
            )
            self._stop.wait(min(delay, self.max_backoff_s))

    def _post(self, key: str, body: bytes) -> tuple[int | None, str | None, float | None]:
        """One POST: (HTTP status or None, error text or None, Retry-After seconds or None)."""
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": key, **self.headers},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, None, None
        except urllib.error.HTTPError as exc:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            try:
                wait = float(retry_after) if retry_after is not None else None
            except ValueError:
                wait = None
            return exc.code, f"HTTP {exc.code} {exc.reason}", wait
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            return None, f"{type(exc).__name__}: {reason}", None
