"""A real Prometheus server (Debian's `prometheus`) on a free loopback port, with a temporary config
and data directory, and a small client for its HTTP API (/api/v1/...)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from fakes.daemon_fakes import free_port, need_tool


class PromError(Exception):
    pass


class Prometheus:
    def __init__(self, tmp: Path, targets: list[str], rule_files: list[Path], scrape_s: float, eval_s: float) -> None:
        self.exe = need_tool("prometheus")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = tmp
        self.log = tmp / "prometheus.log"
        conf = {
            "global": {"scrape_interval": f"{int(scrape_s * 1000)}ms", "evaluation_interval": f"{int(eval_s * 1000)}ms",
                       "scrape_timeout": f"{int(scrape_s * 1000)}ms"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": "tailguard", "static_configs": [{"targets": targets}]}],
        }  # fmt: skip
        self.conf = tmp / "prometheus.yml"
        self.conf.write_text(yaml.safe_dump(conf), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30) -> Prometheus:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.exe, f"--config.file={self.conf}", f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready within {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; the `data` of a success, PromError with Prometheus' error otherwise."""
        url = f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # 400 / 422 carry Prometheus' JSON error
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        return list(self.api("query", **params)["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])
