"""The scrape client: Content-Length, chunked (Go's net/http for big responses), close-delimited
bodies, errors and timeouts, against small servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from fakes.sig_http import serve

from controller.signals.http import FetchError, fetch_text

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


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


def run(handler: Handler, timeout: float = 2.0) -> str:
    out: list[str] = []

    async def go(url: str) -> None:
        out.append(await fetch_text(url, timeout))

    asyncio.run(with_server(handler, go))
    return out[0]


def fails(handler: Handler, timeout: float = 2.0) -> str:
    with pytest.raises(FetchError) as e:
        run(handler, timeout)
    assert "http://127.0.0.1:" in str(e.value)
    return str(e.value)


def test_chunked_body() -> None:
    body = b"a 1\n" * 5000
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 4096]), body[i : i + 4096]) for i in range(0, len(body), 4096)
    )
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n" + chunks + b"0\r\n\r\n"
    assert run(reply(raw)) == body.decode()


def test_content_length_and_close_delimited() -> None:
    assert run(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcdEXTRA")) == "abcd"
    assert run(reply(b"HTTP/1.0 200 OK\r\n\r\nuntil close")) == "until close"


def test_errors_name_the_url() -> None:
    assert "HTTP 503 Service Unavailable" in fails(reply(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"))
    assert "not an HTTP response" in fails(reply(b"SSH-2.0-OpenSSH\r\n"))
    assert "closed before the end" in fails(reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"))
    assert "bad chunk size" in fails(reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"))
    assert "Content-Encoding" in fails(reply(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n"))
    assert "without a response" in fails(reply(b""))


def test_timeout_cancels_a_silent_server() -> None:
    t0 = time.perf_counter()
    msg = fails(reply(b"HTTP/1.1 200 OK\r\n\r\nlate", delay=5.0), timeout=0.3)
    assert "no answer within 0.3 s" in msg and time.perf_counter() - t0 < 2.0


def test_against_the_threaded_test_server() -> None:
    async def go() -> None:
        with serve() as pages:
            url = pages.set("/m", "x 1\n" * 10)
            assert await fetch_text(url, 2.0) == "x 1\n" * 10
            with pytest.raises(FetchError, match="HTTP 404"):
                await fetch_text(pages.base + "/nope", 2.0)

    asyncio.run(go())


def test_keep_alive_reuses_one_connection_and_survives_its_close() -> None:
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
        got = [await fetch_text(url, 2.0) for _ in range(3)]
        await asyncio.sleep(0.05)
        got.append(await fetch_text(url, 2.0))
        assert got == ["n 1.0\n", "n 1.1\n", "n 2.0\n", "n 2.1\n"]
        assert conns == 2

    asyncio.run(with_server(h, go))
