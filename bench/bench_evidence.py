"""The SLO evidence's false-alarm rate and detection delay (fsm.evidence), measured by simulation.

Requests arrive as a Poisson process at a fixed rate, each over the SLO independently with
probability p; one tick every 2 s feeds fsm.evidence.update the tick's counts. False alarms: p at
exactly the budget (eps = 1%), triggers per simulated day (the evidence is reset after each
trigger, as the ladder does after an action). Detection: from a calm start, seconds until the
first trigger at p = burn x eps. Prints a markdown table (docs/decisions.md carries it).

    python -m bench.bench_evidence [--days 5] [--seed 1]
"""

from __future__ import annotations

import argparse

import numpy as np

from fsm.evidence import EvidenceParams, SloEvidence, update
from fsm.observation import LatencyWindow
from fsm.quantiles import Verdict

TICK_S = 2.0
EPS = 0.01
RATES = (0.2, 1.0, 5.0, 20.0, 200.0)


def false_alarms_per_day(rate: float, days: float, rng: np.random.Generator, p: EvidenceParams) -> float:
    ticks = int(days * 86400 / TICK_S)
    n = rng.poisson(rate * TICK_S, ticks)
    b = rng.binomial(n, EPS)
    ev, alarms = SloEvidence(), 0
    for i in range(ticks):
        ev, j = update(ev, LatencyWindow(int(n[i]), over_slo=float(b[i])), 0.99, 1.0, p, i * TICK_S)
        if j.verdict is Verdict.VIOLATING:
            alarms += 1
            ev = ev.reset()
    return alarms / days


def detection_s(rate: float, burn: float, rng: np.random.Generator, p: EvidenceParams, runs: int = 40) -> float:
    out = []
    for _ in range(runs):
        ev, t = SloEvidence(), 0.0
        while t < 6 * 3600:
            n = int(rng.poisson(rate * TICK_S))
            b = float(rng.binomial(n, min(1.0, EPS * burn)))
            ev, j = update(ev, LatencyWindow(n, over_slo=b), 0.99, 1.0, p, t)
            t += TICK_S
            if j.verdict is Verdict.VIOLATING:
                break
        out.append(t)
    return float(np.median(out))


def release_s(rate: float, rng: np.random.Generator, p: EvidenceParams, runs: int = 40) -> float:
    """From fresh evidence (as after an action), seconds until GOOD with nothing over the SLO."""
    out = []
    for _ in range(runs):
        ev, t = SloEvidence(), 0.0
        while t < 6 * 3600:
            n = int(rng.poisson(rate * TICK_S))
            ev, j = update(ev, LatencyWindow(n, over_slo=0.0), 0.99, 1.0, p, t)
            t += TICK_S
            if j.verdict is Verdict.GOOD:
                break
        out.append(t)
    return float(np.median(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    p = EvidenceParams()
    burns = (2.0, 4.0, 10.0, 50.0)
    print(f"h = {p.h:.2f} nats (alpha {p.alpha:g}), H1 burn {p.burn:g}, >= {p.min_ticks} ticks of {TICK_S:g} s")
    head = " | ".join(f"detect s, burn {b:g}" for b in burns)
    print(f"| requests/s | false alarms/day at p = budget | {head} | release s, none over |")
    print("|---|---|" + "---|" * len(burns) + "---|")
    for r in RATES:
        fa = false_alarms_per_day(r, a.days, rng, p)
        det = [detection_s(r, b, rng, p) for b in burns]
        cells = " | ".join("never (6 h)" if d >= 6 * 3600 else f"{d:.0f}" for d in det)
        print(f"| {r:g} | {fa:.2f} | {cells} | {release_s(r, rng, p):.0f} |")


if __name__ == "__main__":
    main()
