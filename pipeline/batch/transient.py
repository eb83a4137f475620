"""Which storage errors are worth another try, and trying again with backoff.

The batch job meets two kinds of I/O failure. A *transient* one (a connection dropped or
refused, a timeout, S3 asking to slow down or answering 5xx) says nothing about the pair: the
same request succeeds once the store is back, so the pair (or the manifest write) is tried
again after a wait that doubles each time. A *permanent* one (no such key, access denied, not
an image) fails the pair's row with one line at once. :func:`is_transient` is the one place
that tells them apart, for the pairs' runs and the manifest writer alike; it follows the
chain of causes, so an error raised on a Ray worker (which arrives wrapped, its original in
``cause``) or re-raised ``from`` a library error is judged by what actually happened.
Nothing here knows about Ray.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["Backoff", "causes", "is_transient", "quiet_storage_faults", "retry_transient"]

log = logging.getLogger("ultrastyle.batch")

T = TypeVar("T")

# errno values of a network path that failed, not of a request that was refused (and a name
# lookup that failed for now).
_TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE, errno.EHOSTUNREACH,
     errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, socket.EAI_AGAIN}
)
# S3 error codes (and HTTP statuses) that ask the client to come back later.
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "RequestTimeTooSkewed", "Throttling",
     "500", "502", "503", "504"}
)
# Exception class names, from libraries imported only where they are installed (botocore,
# aiohttp, urllib3), that mean the connection failed rather than the request.
_TRANSIENT_NAMES = frozenset(
    {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
     "ProxyConnectionError", "ResponseStreamingError", "IncompleteReadError", "ClientConnectionError",
     "ClientConnectorError", "ServerDisconnectedError", "ClientPayloadError", "ClientOSError",
     "ServerTimeoutError", "ProtocolError", "NewConnectionError"}
)


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every error behind it: Ray's ``cause``, ``__cause__`` and ``__context__``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        found = todo.pop()
        if found is None or id(found) in seen:
            continue
        seen.add(id(found))
        yield found
        todo += [getattr(found, "cause", None), found.__cause__, found.__context__]


def _is_transient_one(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(error).__mro__):
        return True
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
        status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in _TRANSIENT_CODES or status in _TRANSIENT_CODES
    return False


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or an error behind it) is a storage fault that a later try may not meet."""
    return any(_is_transient_one(e) for e in causes(error))


@dataclass(frozen=True)
class Backoff:
    """Waits between tries: ``first`` seconds, doubled each time up to ``longest``.

    Attributes:
        tries: calls in all (the first included).
        first: seconds before the second call.
        longest: the longest single wait.
    """

    tries: int = 4
    first: float = 1.0
    longest: float = 30.0

    def wait(self, attempt: int) -> float:
        """Seconds to wait after failed call number ``attempt`` (from 1)."""
        return min(self.longest, self.first * 2 ** (attempt - 1))


def retry_transient(
    call: Callable[[], T], *, backoff: Backoff, what: str, sleep: Callable[[float], None] = time.sleep
) -> T:
    """``call()``, tried again after a wait while it fails with a transient error.

    Args:
        call: the I/O to run.
        backoff: how many tries and how long to wait between them.
        what: what is being tried, for the log line at each retry.
        sleep: how to wait (a test may pass a fake clock).

    Raises:
        The last error: a permanent one at once, a transient one once the tries are used up.
    """
    attempt = 1
    while True:
        try:
            return call()
        except Exception as e:
            if attempt >= backoff.tries or not is_transient(e):
                raise
            wait = backoff.wait(attempt)
            log.debug("%s failed (%s); trying again in %.0f s (%d/%d)", what, type(e).__name__, wait, attempt,
                      backoff.tries - 1)
            sleep(wait)
            attempt += 1


class _StorageFaultFilter(logging.Filter):
    """Drops a log record that carries a transient storage fault as its exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or not is_transient(error)


def quiet_storage_faults() -> None:
    """Keep asyncio's reports of storage faults out of this process's log (idempotent).

    When a connection drops mid-request, the S3 client's event loop may be left with a task
    whose exception nobody awaits, and asyncio logs it with its traceback ("Task exception was
    never retrieved") although the request's caller got the error and retries it. Those reports
    are dropped; asyncio's other messages stay.
    """
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _StorageFaultFilter) for f in logger.filters):
        logger.addFilter(_StorageFaultFilter())
