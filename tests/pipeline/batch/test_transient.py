"""Storage faults worth another try, told from permanent errors, and retried with a doubling wait."""

from __future__ import annotations

import errno
import logging
import socket

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from pipeline.batch.transient import Backoff, is_transient, quiet_storage_faults, retry_transient
from pipeline.imaging.imageio import ImageError


class _RemoteError(Exception):
    """An error as Ray delivers one raised on a worker: a wrapper holding the original in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("ray::ModelActor.stylize_files()\n  File ...\ntraceback text")
        self.cause = cause


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "PutObject")


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as e:
            raise outer from e
    except BaseException as e:
        return e


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError(errno.ECONNRESET, "reset"),
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        TimeoutError("timed out"),
        socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution"),
        OSError(errno.ETIMEDOUT, "timed out"),
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:1"),
        _client_error("SlowDown", 503),
        _client_error("InternalError", 500),
        _RemoteError(EndpointConnectionError(endpoint_url="http://x")),
        _chained(OSError("cannot write s3://b/out/a.jpg"), ConnectionResetError()),
    ],
    ids=repr,
)
def test_storage_faults_are_transient(error):
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        FileNotFoundError(errno.ENOENT, "no such key"),
        PermissionError(errno.EACCES, "denied"),
        _client_error("AccessDenied", 403),
        _client_error("NoSuchBucket", 404),
        ImageError("s3://b/in/a.jpg is not an image"),
        OSError(errno.ENOSPC, "No space left on device"),
        _RemoteError(ImageError("corrupt")),
        ValueError("bad"),
    ],
    ids=repr,
)
def test_errors_about_the_request_itself_are_permanent(error):
    assert not is_transient(error)


def test_retry_transient_waits_doubling_and_gives_up_after_its_tries():
    waits: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("dropped")
        return "written"

    assert retry_transient(flaky, backoff=Backoff(tries=4, first=1.5), what="w", sleep=waits.append) == "written"
    assert waits == [1.5, 3.0]

    calls.clear()
    waits.clear()

    def down() -> None:
        calls.append(1)
        raise ConnectionResetError("dropped")

    with pytest.raises(ConnectionResetError):
        retry_transient(down, backoff=Backoff(tries=3, first=1.0, longest=1.5), what="w", sleep=waits.append)
    assert len(calls) == 3 and waits == [1.0, 1.5]


def test_retry_transient_raises_a_permanent_error_at_once():
    waits: list[float] = []

    def denied() -> None:
        raise PermissionError("denied")

    with pytest.raises(PermissionError):
        retry_transient(denied, backoff=Backoff(tries=5), what="w", sleep=waits.append)
    assert waits == []


def test_asyncio_reports_of_storage_faults_are_dropped_and_others_kept(caplog):
    quiet_storage_faults()
    quiet_storage_faults()  # once is enough: no second filter
    logger = logging.getLogger("asyncio")
    assert len(logger.filters) == len({type(f) for f in logger.filters})
    for error in (ConnectionResetError(errno.ECONNRESET, "reset by peer"), ValueError("a real bug")):
        try:
            raise error
        except Exception:
            logger.error("Task exception was never retrieved", exc_info=True)
    assert [r.exc_info[0] for r in caplog.records if r.name == "asyncio"] == [ValueError]
