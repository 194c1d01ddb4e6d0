"""`check-config --probe`: the config's MIG settings against the tables the drivers list.

Offline, check-config judges MIG instances by the built-in tables (fsm.mig); on a host with a
driver the driver's listing is what `run` will use (controller/mig_tables.py), so the probe checks
again against it: GPU indexes the driver does not list, home instances whose profile the driver
does not offer or whose start it does not allow, overlapping homes, and mig_ladder profiles.
"""

from __future__ import annotations

from collections import defaultdict

from controller.config import Config
from controller.mig_tables import MigTables
from fsm.mig import Slot, layout_problems
from fsm.observation import InstanceRef


class DriverMismatch(ValueError):
    """The config asks for MIG settings this host's driver does not offer (one problem per line)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("against the drivers' MIG profile tables:\n  " + "\n  ".join(problems))


def check_against_driver(cfg: Config, tables: MigTables) -> None:
    """For `run` (at start and on SIGHUP): raise DriverMismatch when the tables read say no."""
    problems, _ = driver_problems(cfg, tables)
    if problems:
        raise DriverMismatch(problems)


async def probe_config(cfg: Config, tables: MigTables) -> tuple[list[str], list[str]]:
    """(problems, warnings), each naming the key path (and the tenants involved)."""
    await tables.refresh(force=True)
    return driver_problems(cfg, tables)


def driver_problems(cfg: Config, tables: MigTables) -> tuple[list[str], list[str]]:
    """The same against tables already read (nothing is judged where no driver listing was read)."""
    problems: list[str] = []
    warnings: list[str] = []
    if tables.last_error:
        warnings.append(f"--probe: {tables.last_error}; MIG settings were checked against the built-in tables only")
        return problems, warnings
    by_gpu = tables.tables
    for i, g in enumerate(cfg.gpus):
        t = by_gpu.get(g.name)
        if t is None:
            continue
        if t.error.startswith("nvidia-smi lists no GPU"):
            problems.append(f"gpus[{i}]({g.name}).index: index {g.index}, but {t.error}")
        elif t.error:
            warnings.append(f"gpus[{i}]({g.name}): {t.error}; its built-in table was used")
        if g.model and t.model is not None and t.builtin is not None and t.source == "driver":
            listed = t.model.name
            if t.builtin.key != g.model and listed not in (g.model, f"NVIDIA {g.model}"):
                warnings.append(f"gpus[{i}]({g.name}).model: {g.model!r} configured, the driver reports {listed}")
        for d in t.differences:
            warnings.append(f"gpus[{i}]({g.name}): driver table differs (the driver wins): {d}")
    homes: dict[str, list[tuple[int, str, Slot]]] = defaultdict(list)
    for i, tc in enumerate(cfg.tenants):
        if not tc.instance:
            continue
        ref = InstanceRef.parse(tc.instance)
        t = by_gpu.get(ref.gpu)
        if t is None or t.model is None or t.source != "driver":
            continue
        where = f"tenants[{i}]({tc.name}).instance"
        if not t.model.has_profile(ref.profile):
            offered = ", ".join(p.name for p in t.model.profiles)
            problems.append(f"{where}: {ref.gpu}'s driver does not offer {ref.profile} (it offers {offered})")
            continue
        p = t.model.profile(ref.profile)
        if ref.start not in p.placements:
            problems.append(f"{where}: {p.name} may start only at {list(p.placements)} on {ref.gpu}'s driver")
            continue
        homes[ref.gpu].append((i, tc.name, ref.slot))
    for gpu, items in sorted(homes.items()):
        model = by_gpu[gpu].model
        assert model is not None
        for msg in layout_problems(model, [s for _, _, s in items]):
            names = ", ".join(f"tenants[{i}]({n}).instance" for i, n, s in items if str(s) in msg)
            problems.append(f"{names or 'tenants'}: instances on {gpu}: {msg}")
    for key, ladder in cfg.policy.mig_ladder.items():
        for gname, t in sorted(by_gpu.items()):
            if t.model is None or t.model.key != key or t.source != "driver":
                continue
            missing = [n for n in ladder if not t.model.has_profile(n)]
            if missing:
                problems.append(f"policy.mig_ladder.{key}: {gname}'s driver does not offer {', '.join(missing)}")
    return problems, warnings
