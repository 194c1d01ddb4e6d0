"""The config's MIG settings against the tables the drivers list (`check-config --probe`, `run`).

Offline, check-config judges MIG homes by the built-in tables (fsm.mig); on a host with a driver,
the driver's listing is what `run` uses (controller/mig_tables.py), so the homes are judged again
by it (config_checks.mig_problems with the driver's tables: the driver wins), and on top: GPU
indexes the driver does not list, mig_ladder profiles it does not offer; warnings for a configured
model the driver contradicts and for every way a driver's table differs from the built-in one.
"""

from __future__ import annotations

from controller.config import Config
from controller.config_checks import Problem, mig_problems
from controller.mig_tables import MigTables


class DriverMismatch(ValueError):
    """The config asks for MIG settings this host's driver does not offer (one problem per line)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("against the drivers' MIG profile tables:\n  " + "\n  ".join(problems))


def check_against_driver(cfg: Config, tables: MigTables) -> None:
    """For `run` (at start and on SIGHUP): raise DriverMismatch when the tables read say no."""
    homes = [p.line() for p in mig_problems(cfg, tables.driver_model) if p.error]
    problems, _ = driver_problems(cfg, tables)
    if homes or problems:
        raise DriverMismatch(homes + problems)


def driver_problems(cfg: Config, tables: MigTables) -> tuple[list[str], list[str]]:
    """(problems, warnings) beyond the MIG homes, as `key: message` lines (nothing is judged
    where no driver listing was read)."""
    out: list[Problem] = []
    if tables.last_error:
        why = f"{tables.last_error}; MIG settings were checked against the built-in tables only"
        return [], [Problem("gpus", why, error=False).line()]
    by_gpu = tables.tables
    for i, g in enumerate(cfg.gpus):
        t = by_gpu.get(g.name)
        key = f"gpus[{i}]({g.name})"
        if t is None:
            continue
        if t.error.startswith("nvidia-smi lists no GPU"):
            out.append(Problem(f"{key}.index", f"index {g.index}, but {t.error}"))
        elif t.error:
            out.append(Problem(key, f"{t.error}; its built-in table is used", error=False))
        if g.model and t.model is not None and t.builtin is not None and t.source == "driver":
            listed = t.model.name
            if t.builtin.key != g.model and listed not in (g.model, f"NVIDIA {g.model}"):
                out.append(Problem(f"{key}.model", f"{g.model!r} configured, the driver reports {listed}", False))
        for d in t.differences:
            out.append(Problem(key, f"the driver's MIG table differs from the built-in one (it wins): {d}", False))
    for model_key, ladder in cfg.policy.mig_ladder.items():
        for gname, t in sorted(by_gpu.items()):
            if t.model is None or t.model.key != model_key or t.source != "driver":
                continue
            missing = [n for n in ladder if not t.model.has_profile(n)]
            if missing:
                out.append(
                    Problem(f"policy.mig_ladder.{model_key}", f"{gname}'s driver does not offer {', '.join(missing)}")
                )
    return [p.line() for p in out if p.error], [p.line() for p in out if not p.error]
