"""A bounded HTTP GET for scrapes, run off the event loop (urllib, stdlib only)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

MAX_BODY = 32 * 1024 * 1024  # a scrape larger than this is a misconfiguration, not data


class FetchError(Exception):
    """The endpoint could not be read; the message names the URL and the cause."""


def _get(url: str, timeout_s: float) -> str:
    req = urllib.request.Request(url, headers={"Accept": "text/plain;version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise FetchError(f"{url}: {e.reason}") from None
    except (OSError, ValueError) as e:
        raise FetchError(f"{url}: {e}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"{url}: response larger than {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


async def fetch_text(url: str, timeout_s: float) -> str:
    return await asyncio.to_thread(_get, url, timeout_s)
