"""The scrape transport, A/B: CPU time per scrape, the daemon's hand-written HTTP/1.1 client
(controller/signals/http.py) against the maintained async clients aiohttp (bench/http_aiohttp.py,
the candidate that passes tests/test_sig_http.py) and httpx, interleaved in one run.

The server runs in another process on 127.0.0.1 (its CPU is not in the figure) and answers as the
real exporters frame their bodies:
- /vllm: a vLLM /metrics body with Content-Length (uvicorn, behind vLLM's API server, sends one
  for a body it has whole). The body is tests/fixtures' vLLM excerpt (the `...` lines dropped)
  repeated for 20 model_name values, as a server with LoRA adapters labels them.
- /dcgm: bench_signals' dcgm-exporter body (8 GPUs x 7 MIG instances, every default counter:
  586 lines, ~100 KB) in chunked transfer coding, 2048-byte chunks: Go's net/http buffers a
  response in bufferBeforeChunkingSize = 2048 bytes and sends each full buffer as one chunk when
  the handler set no Content-Length (src/net/http/server.go).
Each client keeps its connection alive between scrapes, as the daemon does from tick to tick.

Run: .venv/bin/python -m bench.bench_http [--scrapes N] [--rounds R]
The figure is this process's CPU time (all threads) per scrape: body fetched and decoded to str.
Rounds alternate the order of the clients (A B C, C B A, ...) so a change in the machine's speed (it is
shared) hits each about equally; the table gives the median of the per-round figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_FIXTURE = ROOT / "tests" / "fixtures" / "vllm-metrics_llama-3.1-8b_v0_excerpt_vllm-docs.prom"
CHUNK = 2048
Fetch = Callable[[str, float], Awaitable[str]]


def vllm_body(models: int = 20) -> str:
    base = "".join(line + "\n" for line in VLLM_FIXTURE.read_text().splitlines() if line != "...")
    name = 'model_name="meta-llama/Llama-3.1-8B-Instruct"'
    parts = [base]
    for i in range(1, models):
        series = [ln for ln in base.splitlines() if not ln.startswith("#")]
        parts.append("".join(ln.replace(name, f'model_name="llama-3.1-8b-lora-{i}"') + "\n" for ln in series))
    return "".join(parts)


def dcgm_body() -> str:
    from bench.bench_signals import dcgm_scrape

    return dcgm_scrape()


# ---- the server (another process) ----


async def _serve() -> None:
    vllm, dcgm = vllm_body().encode(), dcgm_body().encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(dcgm[i : i + CHUNK]), dcgm[i : i + CHUNK])
                       for i in range(0, len(dcgm), CHUNK)) + b"0\r\n\r\n"  # fmt: skip
    head_v = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
    head_v += b"Content-Length: %d\r\n\r\n" % len(vllm)
    head_d = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
    head_d += b"Transfer-Encoding: chunked\r\n\r\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await reader.readuntil(b"\r\n\r\n")
                if req.startswith(b"GET /vllm "):
                    writer.write(head_v + vllm)
                elif req.startswith(b"GET /dcgm "):
                    writer.write(head_d + chunked)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(srv.sockets[0].getsockname()[1], flush=True)
    async with srv:
        await srv.serve_forever()


# ---- the clients ----


def clients() -> dict[str, Fetch]:
    """The daemon's client first (the baseline), then the maintained ones (the bench extra)."""
    from controller.signals import http

    out: dict[str, Fetch] = {"hand-written (controller)": http.fetch_text}
    try:
        from bench import http_aiohttp
    except ImportError:
        print("aiohttp is not installed (pip install -e '.[bench]'): no aiohttp column")
    else:
        out[http_aiohttp.LIBRARY] = http_aiohttp.fetch_text
    try:
        import httpx
    except ImportError:
        print("httpx is not installed (pip install -e '.[bench]'): no httpx column")
        return out
    per_loop: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "identity", "User-Agent": "tailguard"}

    async def fetch_httpx(url: str, timeout_s: float) -> str:
        # Streamed, so the body limit could be enforced while reading, as the others do.
        c = per_loop.get(asyncio.get_running_loop())
        if c is None:
            c = per_loop[asyncio.get_running_loop()] = httpx.AsyncClient(timeout=timeout_s, headers=headers)
        async with asyncio.timeout(timeout_s), c.stream("GET", url) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            parts = [b async for b in r.aiter_raw()]
        return b"".join(parts).decode("utf-8", errors="replace")

    out[f"httpx {httpx.__version__}"] = fetch_httpx
    return out


async def measure(fetch: Fetch, url: str, n: int, want: int) -> float:
    for _ in range(3):  # warm: the connection is open, as from the second tick on
        assert len(await fetch(url, 2.0)) == want
    t0 = time.process_time()
    for _ in range(n):
        await fetch(url, 2.0)
    return (time.process_time() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scrapes", type=int, default=200, help="scrapes per client, body and round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve())
        return
    server = subprocess.Popen([sys.executable, "-m", "bench.bench_http", "--serve"], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        fetchers = clients()
        bodies = {"vllm": len(vllm_body()), "dcgm": len(dcgm_body())}
        per: dict[tuple[str, str], list[float]] = {(c, b): [] for c in fetchers for b in bodies}

        async def go() -> None:
            for r in range(args.rounds):
                names = list(fetchers) if r % 2 == 0 else list(reversed(fetchers))
                for name in names:
                    for body, size in bodies.items():
                        url = f"http://127.0.0.1:{port}/{body}"
                        per[name, body].append(await measure(fetchers[name], url, args.scrapes, size))

        asyncio.run(go())
    finally:
        server.terminate()
        server.wait(timeout=5)
    load = os.getloadavg()
    print(f"{platform.machine()} CPython {platform.python_version()}, {os.cpu_count()} CPUs, load avg "
          f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}; {args.rounds} rounds x {args.scrapes} scrapes")  # fmt: skip
    print(f"bodies: vllm {bodies['vllm']} B (Content-Length), dcgm {bodies['dcgm']} B (chunked, {CHUNK} B chunks)")
    base = next(iter(fetchers))
    for body in bodies:
        for name in fetchers:
            xs = per[name, body]
            paired = statistics.median(x / b for x, b in zip(xs, per[base, body], strict=True))
            print(
                f"  {body:5s} {name:28s} median {statistics.median(xs) * 1e6:6.0f} us/scrape (rounds "
                f"{min(xs) * 1e6:.0f}-{max(xs) * 1e6:.0f}); x{paired:.2f} of hand-written (per-round ratios' median)"
            )
    # One tick of bench_signals' host: 8 vLLM scrapes and one dcgm-exporter scrape.
    for name in fetchers:
        tick = [8 * v + d for v, d in zip(per[name, "vllm"], per[name, "dcgm"], strict=True)]
        old = [8 * v + d for v, d in zip(per[base, "vllm"], per[base, "dcgm"], strict=True)]
        ratio = statistics.median(t / o for t, o in zip(tick, old, strict=True))
        ms = statistics.median(tick) * 1e3
        print(f"  tick  {name:28s} 8 x vllm + dcgm: {ms:.2f} ms of CPU; x{ratio:.2f} of hand-written")


if __name__ == "__main__":
    main()
