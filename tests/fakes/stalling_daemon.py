"""`tailguard` (controller.cli) with one change for tests: once the file named by the environment's
TAILGUARD_TEST_STALL exists, the JSON-lines latency reader blocks until it is removed, as a read
from a hung mount would. The first such read runs on the event loop (a local file is read inline
while it is fast: controller.signals.base.InlineOrThread), so the loop stalls while the metrics
thread keeps answering with the last snapshot. (A FIFO in the file's place did this until the
reader refused FIFOs.)"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from controller.cli import main
from controller.signals.latency import JsonlLatencySampler

_MARK = os.environ["TAILGUARD_TEST_STALL"]
_read_new = JsonlLatencySampler.read_new


def _stalling_read_new(self: JsonlLatencySampler) -> tuple[list[float], list[str]]:
    while os.path.exists(_MARK):
        time.sleep(0.05)
    return _read_new(self)


JsonlLatencySampler.read_new = _stalling_read_new  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main())
