"""A bounded HTTP GET for scrapes.

Plain http:// URLs (exporters on localhost, the usual case) are fetched on the event loop with
asyncio streams: no thread per scrape, and the timeout really cancels the request. HTTP/1.1 with
keep-alive (the connection is reused on the next tick); bodies by Content-Length, chunked transfer
coding (Go's net/http, behind dcgm-exporter, uses it for large responses), or until the server
closes. https:// goes through urllib in a worker thread.

Hand-written rather than aiohttp or httpx: those cost 2x and 15x the CPU per scrape here (the A/B
in bench/RESULTS.md, "The scrape transport"; issue 12 kept this client above 1.5x). The behaviour
tests (tests/test_sig_http.py) run on this client and on the aiohttp candidate alike.
Timeouts: connecting and the whole request share the sampler's timeout_s (one deadline), and the
error says which phase ran out. The body limit holds while reading: a Content-Length over it is
refused before the body is read, a chunked or close-delimited body as soon as it passes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from schema.jsontext import ascii_digits
from schema.problems import short_text

MAX_BODY = 32 * 1024 * 1024  # a scrape larger than this is a misconfiguration, not data
MAX_HEADERS = 100


class FetchError(Exception):
    """The endpoint could not be read; the message names the URL and the cause."""


def _get(url: str, timeout_s: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    deadline = time.monotonic() + timeout_s
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            # A piece at a time against the deadline: the socket's timeout holds per read, and a server
            # sending a byte under it each time held this worker thread for ever (the default
            # executor's few threads, which the other samplers' reads wait for).
            parts: list[bytes] = []
            total = 0
            while part := resp.read1(65536):
                total += len(part)
                if total > MAX_BODY:
                    raise FetchError(f"{url}: response larger than {MAX_BODY} bytes")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url}: no answer within {timeout_s:g} s")
                parts.append(part)
            if resp.length:  # read1 ends at the close, with bytes of the Content-Length still due
                raise FetchError(f"{url}: connection closed before the end of the response")
            body = b"".join(parts)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError(f"{url}: {e.reason}") from None
    except http.client.IncompleteRead:
        raise FetchError(f"{url}: connection closed before the end of the response") from None
    except http.client.HTTPException as e:  # not an OSError: a bad status line, a header line too long
        raise FetchError(f"{url}: bad HTTP response: {type(e).__name__}: {short_text(str(e), 80)}") from None
    except (OSError, ValueError) as e:
        raise FetchError(f"{url}: {e}") from None
    return body.decode("utf-8", errors="replace")


async def _chunked(reader: asyncio.StreamReader, url: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readline()
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FetchError(f"{url}: bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            # The trailer section ends with an empty line; left unread, its CRLF would be taken as
            # the next response's status line on the kept-alive connection.
            for _ in range(MAX_HEADERS):
                if not (await reader.readline()).strip():
                    return b"".join(parts)
            raise FetchError(f"{url}: more than {MAX_HEADERS} trailer lines")
        total += size
        if total > MAX_BODY:
            raise FetchError(f"{url}: response larger than {MAX_BODY} bytes")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk


async def _until_close(reader: asyncio.StreamReader, url: str) -> bytes:
    # read(n) returns what has arrived so far, not n bytes: loop until EOF
    parts: list[bytes] = []
    total = 0
    while part := await reader.read(65536):
        total += len(part)
        if total > MAX_BODY:
            raise FetchError(f"{url}: response larger than {MAX_BODY} bytes")
        parts.append(part)
    return b"".join(parts)


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    loop: asyncio.AbstractEventLoop


# Idle keep-alive connections by (host, port): a connection costs more CPU than the request
# (~0.5 ms vs ~0.15 ms per scrape here). A connection is used by one request at a time.
_idle: dict[tuple[str, int], list[_Conn]] = {}


def _take(key: tuple[str, int]) -> _Conn | None:
    loop = asyncio.get_running_loop()
    pool = _idle.get(key, [])
    while pool:
        c = pool.pop()
        if c.loop is loop and not c.writer.is_closing() and not c.reader.at_eof():
            return c
        with contextlib.suppress(Exception):  # its loop may be gone (a previous asyncio.run)
            c.writer.close()
    return None


async def _get_async(url: str, u: urllib.parse.SplitResult, phase: list[str]) -> str:
    key = (u.hostname or "", u.port or 80)
    conn = _take(key)
    if conn is not None:
        try:
            return await _request(url, u, conn, key)
        except (asyncio.IncompleteReadError, ConnectionError, _StaleError):
            pass  # the server closed the idle connection: once more on a new one
    phase[0] = "connect"
    reader, writer = await asyncio.open_connection(*key)
    phase[0] = "request"
    return await _request(url, u, _Conn(reader, writer, asyncio.get_running_loop()), key)


class _StaleError(Exception):
    pass


async def _request(url: str, u: urllib.parse.SplitResult, conn: _Conn, key: tuple[str, int]) -> str:
    reader, writer = conn.reader, conn.writer
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    keep = False
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {u.netloc}\r\nAccept: text/plain;version=0.0.4\r\n"
            "Accept-Encoding: identity\r\nUser-Agent: tailguard\r\n\r\n".encode("ascii")
        )
        raw_status = await reader.readline()
        if not raw_status:
            raise _StaleError
        status = raw_status.decode("latin-1").rstrip("\r\n")
        proto, _, rest = status.partition(" ")
        code_text, _, reason = rest.partition(" ")
        if not proto.startswith("HTTP/") or not ascii_digits(code_text):
            raise FetchError(f"{url}: not an HTTP response: {status[:60]!r}")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        else:
            raise FetchError(f"{url}: more than {MAX_HEADERS} header lines")
        delimited = True
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _chunked(reader, url)
        elif "content-length" in headers:
            length_text = headers["content-length"]
            if not ascii_digits(length_text) or int(length_text) > MAX_BODY:
                raise FetchError(f"{url}: bad or too large Content-Length {length_text[:20]!r}")
            body = await reader.readexactly(int(length_text))
        else:
            delimited = False
            body = await _until_close(reader, url)
        keep = delimited and proto == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if code_text != "200":
            raise FetchError(f"{url}: HTTP {code_text} {reason}".rstrip())
        if headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            raise FetchError(f"{url}: unexpected Content-Encoding {headers['content-encoding']!r}")
        return body.decode("utf-8", errors="replace")
    finally:
        if keep:
            _idle.setdefault(key, []).append(conn)
        else:
            writer.close()


async def fetch_text(url: str, timeout_s: float) -> str:
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        return await asyncio.to_thread(_get, url, timeout_s)
    phase = ["request"]  # which one the deadline cut: "connect" or "request"
    try:
        async with asyncio.timeout(timeout_s):
            return await _get_async(url, u, phase)
    except TimeoutError:
        what = "no connection" if phase[0] == "connect" else "no answer"
        raise FetchError(f"{url}: {what} within {timeout_s:g} s") from None
    except asyncio.IncompleteReadError:
        raise FetchError(f"{url}: connection closed before the end of the response") from None
    except _StaleError:
        raise FetchError(f"{url}: connection closed without a response") from None
    except (asyncio.LimitOverrunError, ValueError) as e:
        raise FetchError(f"{url}: bad HTTP response: {e}") from None
    except OSError as e:
        raise FetchError(f"{url}: {e.strerror or e}") from None
