"""The scrape client: Content-Length, chunked (Go's net/http for big responses), close-delimited
bodies, keep-alive, errors, timeouts and the body limit, against small servers on 127.0.0.1.

Each test runs on the daemon's client (controller/signals/http.py) and on the aiohttp candidate
that bench/bench_http.py measures against it (bench/http_aiohttp.py), so the A/B compares two
clients that do the same job."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from fakes.sig_http import serve

from controller.signals import http
from controller.signals.http import FetchError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Fetch = Callable[[str, float], Awaitable[str]]
ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def _candidate() -> Fetch:
    pytest.importorskip("aiohttp")  # the bench extra; installed by `make` with dev
    spec = importlib.util.spec_from_file_location("bench_http_aiohttp", ROOT / "bench" / "http_aiohttp.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.fetch_text  # type: ignore[no-any-return]


@pytest.fixture(params=["hand-written", "aiohttp"])
def fetch(request: pytest.FixtureRequest) -> Fetch:
    return http.fetch_text if request.param == "hand-written" else _candidate()


async def with_server(handler: Handler, fn: Callable[[str], Awaitable[None]]) -> None:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        await fn(f"http://127.0.0.1:{port}/metrics")
    finally:
        srv.close()


def reply(raw: bytes, delay: float = 0.0) -> Handler:
    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = await reader.readuntil(b"\r\n\r\n")
        assert req.startswith(b"GET /metrics HTTP/1.1\r\n") and b"Host: 127.0.0.1:" in req
        if delay:
            await asyncio.sleep(delay)
        writer.write(raw)
        await writer.drain()
        writer.close()

    return h


def run(fetch: Fetch, handler: Handler, timeout: float = 2.0) -> str:
    out: list[str] = []

    async def go(url: str) -> None:
        out.append(await fetch(url, timeout))

    asyncio.run(with_server(handler, go))
    return out[0]


def fails(fetch: Fetch, handler: Handler, timeout: float = 2.0) -> str:
    with pytest.raises(FetchError) as e:
        run(fetch, handler, timeout)
    assert "http://127.0.0.1:" in str(e.value)
    return str(e.value)


def chunked(body: bytes, size: int = 2048) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))


def test_chunked_body(fetch: Fetch) -> None:
    body = b"a 1\n" * 5000
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n" + chunked(body)
    assert run(fetch, reply(raw + b"0\r\n\r\n")) == body.decode()


def test_keep_alive_after_chunked_bodies_with_and_without_trailers(fetch: Fetch) -> None:
    """The connection is reused after a chunked body: the end of the trailer section is consumed
    (the hand-written client once left its CRLF behind, failing every second dcgm-exporter scrape)."""
    conns = 0
    bodies = [b"DCGM_FI_DEV_GPU_TEMP 38\n" * 300, b"x 2\n" * 700, b"y 3\n"]

    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        for i, body in enumerate(bodies):
            await reader.readuntil(b"\r\n\r\n")
            trailer = b"X-Checksum: 1\r\n" if i == 1 else b""
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body) + b"0\r\n"
                         + trailer + b"\r\n")  # fmt: skip
            await writer.drain()
        await reader.read()

    async def go(url: str) -> None:
        got = [await fetch(url, 2.0) for _ in bodies]
        assert got == [b.decode() for b in bodies] and conns == 1

    asyncio.run(with_server(h, go))


def test_content_length_and_close_delimited(fetch: Fetch) -> None:
    assert run(fetch, reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd")) == "abcd"
    assert run(fetch, reply(b"HTTP/1.0 200 OK\r\n\r\nuntil close")) == "until close"


def test_a_large_close_delimited_body_arriving_in_pieces_is_read_to_the_end(fetch: Fetch) -> None:
    """An HTTP/1.0 exporter without Content-Length: the body ends when the server closes, not when
    the first read returns (the hand-written client once stopped at the first 64 KiB)."""
    body = b"".join(b'm{i="%d"} %d\n' % (i, i) for i in range(60000))

    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        for i in range(0, len(body), 100_000):
            writer.write(body[i : i + 100_000])
            await writer.drain()
            await asyncio.sleep(0.005)
        writer.close()

    assert len(body) > 1_000_000
    assert run(fetch, h) == body.decode()


def test_errors_name_the_url(fetch: Fetch) -> None:
    assert "HTTP 503 Service Unavailable" in fails(fetch, reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"))
    assert "HTTP response" in fails(fetch, reply(b"SSH-2.0-OpenSSH\r\n"))
    short = fails(fetch, reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"))
    assert "closed before the end" in short or "cut short" in short
    bad = fails(fetch, reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
    assert "chunk size" in bad
    assert "Content-Encoding" in fails(
        fetch, reply(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n")
    )
    assert "without a response" in fails(fetch, reply(b""))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError, match=rf"^http://127.0.0.1:{port}/metrics: .*(refused|failed)"):
        asyncio.run(fetch(f"http://127.0.0.1:{port}/metrics", 2.0))


def test_a_server_that_closes_mid_body(fetch: Fetch) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    msg = fails(fetch, reply(head + chunked(b"z 1\n" * 2000)[:5000]))
    assert "closed before the end" in msg or "cut short" in msg


def test_timeout_cancels_a_silent_server(fetch: Fetch) -> None:
    t0 = time.perf_counter()
    msg = fails(fetch, reply(b"HTTP/1.1 200 OK\r\n\r\nlate", delay=5.0), timeout=0.3)
    assert "no answer within 0.3 s" in msg and time.perf_counter() - t0 < 2.0


def test_timeout_cancels_a_server_that_hangs_mid_body(fetch: Fetch) -> None:
    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000)
        await writer.drain()
        await asyncio.sleep(5)

    t0 = time.perf_counter()
    assert "no answer within 0.3 s" in fails(fetch, h, timeout=0.3)
    assert time.perf_counter() - t0 < 2.0


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so connect() hangs."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for c in fillers:
            c.close()
        lst.close()


def test_connect_timeout(fetch: Fetch, full_backlog: int) -> None:
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as e:
        asyncio.run(fetch(f"http://127.0.0.1:{full_backlog}/metrics", 0.3))
    assert "within 0.3 s" in str(e.value) and time.perf_counter() - t0 < 2.0
    if fetch is http.fetch_text:  # the daemon's client says which phase ran out
        assert "no connection within 0.3 s" in str(e.value)


def endless(framing: bytes, piece: Callable[[int], bytes]) -> tuple[Handler, list[int]]:
    """A server that answers with a body that never ends; `sent` counts the body bytes it wrote."""
    sent = [0]

    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        try:
            for i in range(100_000):
                data = piece(i)
                writer.write(data)
                sent[0] += len(data)
                await writer.drain()
        except ConnectionError:
            pass

    return h, sent


@pytest.mark.parametrize("framing", ["content-length", "chunked", "close"])
def test_body_limit_refuses_without_reading_it_all(fetch: Fetch, framing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "MAX_BODY", 256 * 1024)
    line = b'vllm:x_bucket{le="0.1"} 1\n' * 400
    if framing == "content-length":  # announced over the limit: refused before the body is read
        h, sent = endless(b"Content-Length: 10000000000\r\n", lambda i: line)
    elif framing == "chunked":
        h, sent = endless(b"Transfer-Encoding: chunked\r\n", lambda i: b"%x\r\n%s\r\n" % (len(line), line))
    else:
        h, sent = endless(b"Connection: close\r\n", lambda i: line)
    t0 = time.perf_counter()
    msg = fails(fetch, h, timeout=10.0)
    assert time.perf_counter() - t0 < 3.0, "the client read on instead of stopping at the limit"
    assert ("Content-Length" in msg) if framing == "content-length" else ("larger than 262144 bytes" in msg)
    assert sent[0] < 50_000_000


def test_against_the_threaded_test_server(fetch: Fetch) -> None:
    async def go() -> None:
        with serve() as pages:
            url = pages.set("/m", "x 1\n" * 10)
            assert await fetch(url, 2.0) == "x 1\n" * 10
            with pytest.raises(FetchError, match="HTTP 404"):
                await fetch(pages.base + "/nope", 2.0)

    asyncio.run(go())


def test_keep_alive_reuses_one_connection_and_survives_its_close(fetch: Fetch) -> None:
    conns = 0

    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal conns
        conns += 1
        for i in range(2):  # serves two requests, then hangs up, as an idle timeout would
            await reader.readuntil(b"\r\n\r\n")
            body = f"n {conns}.{i}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
        writer.close()

    async def go(url: str) -> None:
        got = [await fetch(url, 2.0) for _ in range(3)]
        await asyncio.sleep(0.05)
        got.append(await fetch(url, 2.0))
        assert got == ["n 1.0\n", "n 1.1\n", "n 2.0\n", "n 2.1\n"]
        assert conns == 2

    asyncio.run(with_server(h, go))


# -- the https path: urllib in a worker thread (driven here over http, the same code after TLS) --------


async def _threaded(url: str, timeout_s: float) -> str:
    return await asyncio.to_thread(http._get, url, timeout_s)


def test_the_threaded_path_holds_its_deadline_against_a_trickling_server() -> None:
    """Found by hunting: the socket's timeout holds per read, so a server sending a byte every
    0.1 s held the worker thread 10 s past a 0.3 s timeout (the runner's timeout abandons the
    await, not the thread: a few such scrapes took every thread of the default executor)."""

    async def h(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)

    t0 = time.perf_counter()
    assert "no answer within 0.3 s" in fails(_threaded, h, timeout=0.3)
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x 1\n" * 10, "closed before the end of the response"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n" + b"x 1\n" * 10 + b"\r\n",
         "closed before the end of the response"),
        (b"<html>hello</html>\r\n\r\n", "bad HTTP response: BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n", "bad HTTP response: LineTooLong"),
    ],
    ids=["content-length", "chunked", "no-status-line", "header-too-long"],
)  # fmt: skip
def test_the_threaded_path_names_a_cut_or_bad_response(raw: bytes, says: str) -> None:
    """Found by hunting: a body cut short of its Content-Length was read as the whole scrape (40 of
    100 bytes: a histogram without its last buckets), and http.client's own exceptions (a cut
    chunked body, no status line) are no OSError: they left as IncompleteRead or BadStatusLine,
    naming no URL."""
    assert says in fails(_threaded, reply(raw))
