"""The aiohttp candidate for controller/signals/http.py, measured by bench/bench_http.py against
the hand-written client (issue 12, item 8). Not used by the daemon: the A/B in bench/RESULTS.md
("The scrape transport") found it above the 1.5x CPU-per-scrape bar the issue set for replacing
the hand-written client. It passes the same behaviour tests (tests/test_sig_http.py runs them on
both), so it can be swapped in if a later aiohttp closes the gap.

One ClientSession per event loop keeps the connection to each exporter alive from tick to tick.
aiohttp frames the body (Content-Length, chunked, or until close), retries a request once when
the server closed an idle kept-alive connection, and speaks https:// itself. What this module
adds: the timeouts (connect, read and total, all the sampler's timeout_s), the body limit enforced
while reading (a Content-Length over it is refused before a byte of the body is read), and every
failure as a FetchError naming the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import aiohttp

from controller.signals import http as _http
from controller.signals.http import FetchError

LIBRARY = f"aiohttp {aiohttp.__version__}"
HEADERS = {
    "Accept": "text/plain;version=0.0.4",
    "Accept-Encoding": "identity",  # a compressed body would dodge the limit (and cost CPU to inflate)
    "User-Agent": "tailguard",
}


# Per event loop: the session and the async generator that owns it.
_sessions: dict[asyncio.AbstractEventLoop, tuple[aiohttp.ClientSession, AsyncGenerator[aiohttp.ClientSession]]] = {}


async def _own_session(loop: asyncio.AbstractEventLoop) -> AsyncGenerator[aiohttp.ClientSession]:
    # An async generator, so asyncio.run()'s shutdown_asyncgens() closes the session (and its
    # kept-alive sockets) while the loop still runs, without a close call at every exit path.
    session = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit_per_host=8))
    try:
        yield session
    finally:
        _sessions.pop(loop, None)
        await session.close()


async def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    got = _sessions.get(loop)
    if got is not None and not got[0].closed:
        return got[0]
    for old in [lp for lp in _sessions if lp.is_closed()]:
        del _sessions[old]  # a loop closed without shutdown_asyncgens(): nothing left to await there
    owner = _own_session(loop)
    session = await anext(owner)
    _sessions[loop] = (session, owner)
    return session


async def close() -> None:
    """Close this loop's session now (asyncio.run() does it by itself at exit)."""
    got = _sessions.get(asyncio.get_running_loop())
    if got is not None:
        await got[1].aclose()


async def _read(url: str, resp: aiohttp.ClientResponse) -> bytes:
    if resp.status != 200:
        raise FetchError(f"{url}: HTTP {resp.status} {resp.reason or ''}".rstrip())
    encoding = resp.headers.get("Content-Encoding", "identity").lower()
    if encoding not in ("identity", ""):
        raise FetchError(f"{url}: unexpected Content-Encoding {encoding!r}")
    if resp.content_length is not None and resp.content_length > _http.MAX_BODY:
        raise FetchError(f"{url}: Content-Length {resp.content_length} is over the limit of {_http.MAX_BODY} bytes")
    parts: list[bytes] = []
    total = 0
    async for part in resp.content.iter_any():
        total += len(part)
        if total > _http.MAX_BODY:
            raise FetchError(f"{url}: response larger than {_http.MAX_BODY} bytes")
        parts.append(part)
    return b"".join(parts)


async def fetch_text(url: str, timeout_s: float) -> str:
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s, sock_read=timeout_s)
    try:
        session = await _session()
        async with session.get(url, headers=HEADERS, timeout=timeout, allow_redirects=False) as resp:
            body = await _read(url, resp)
    except aiohttp.ConnectionTimeoutError:
        raise FetchError(f"{url}: no connection within {timeout_s:g} s") from None
    except TimeoutError:  # aiohttp's read and total timeouts are TimeoutErrors too
        raise FetchError(f"{url}: no answer within {timeout_s:g} s") from None
    except aiohttp.ServerDisconnectedError:
        raise FetchError(f"{url}: connection closed without a response") from None
    except aiohttp.ClientPayloadError as e:
        raise FetchError(f"{url}: body cut short or badly framed: {_cause(e)}") from None
    except aiohttp.ClientResponseError as e:
        raise FetchError(f"{url}: bad HTTP response: {_one_line(e.message)}") from None
    except aiohttp.ClientConnectorError as e:
        raise FetchError(f"{url}: {e.os_error.strerror or e.os_error}") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:  # ValueError: a URL aiohttp cannot use
        raise FetchError(f"{url}: {type(e).__name__}: {e}") from None
    return body.decode("utf-8", errors="replace")


def _cause(e: aiohttp.ClientPayloadError) -> str:
    inner = e.__cause__ or e.__context__ or e
    return _one_line(str(getattr(inner, "message", None) or inner))


def _one_line(message: str) -> str:
    # llhttp's messages span lines and point at the bad byte with a caret: one line for the log
    return " ".join(w for w in message.split() if w != "^")[:200]
