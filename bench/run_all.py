"""`make bench`: run every benchmark in bench/ one after the other and print their figures.

Each benchmark is a module `bench/bench_*.py` with a `main()`; the figures to keep go into
bench/RESULTS.md by hand, with the machine and the date (this machine is shared and noisy).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        saved = sys.argv
        sys.argv = [name]
        try:
            importlib.import_module(f"bench.{name}").main()
        except SystemExit as e:
            if e.code not in (0, None):
                failed.append(name)
        except Exception as e:  # a broken benchmark must not hide the others' figures
            print(f"{name} failed: {e!r}", file=sys.stderr)
            failed.append(name)
        finally:
            sys.argv = saved
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
