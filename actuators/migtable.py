"""Read one GPU's MIG profile table from its driver: `nvidia-smi mig -i N -lgip` and `-lgipp`.

The rows are joined by profile ID and handed to fsm.migdriver, which builds the GpuModel in force
and names how it differs from the built-in table. Both commands run under NvidiaSmi's timeout.
"""

from __future__ import annotations

from collections.abc import Sequence

from actuators.nvsmi import LgipRow, NvidiaSmi, Placements
from fsm.mig import GpuModel
from fsm.migdriver import DriverProfile, model_from_driver


def driver_profiles(lgip: Sequence[LgipRow], lgipp: Sequence[Placements], index: int) -> list[DriverProfile]:
    """The -lgip rows of GPU `index` in the tool's order, each with its -lgipp placements."""
    where = {p.profile_id: p for p in lgipp if p.gpu == index}
    out = []
    for r in lgip:
        if r.gpu != index:
            continue
        pl = where.get(r.profile_id)
        out.append(
            DriverProfile(
                r.name, r.profile_id, r.total, r.gib, r.sm, r.dec, r.enc, r.jpg, r.ofa, r.ce,
                pl.starts if pl is not None else (), pl.size if pl is not None else 0,
            )
        )  # fmt: skip
    return out


async def read_driver_table(
    nvsmi: NvidiaSmi, index: int, gpu_name: str, base: GpuModel | None
) -> tuple[GpuModel, list[str]]:
    """The table GPU `index` offers now. Raises NvsmiError (MigDisabled when MIG mode is off)."""
    lgip = await nvsmi.lgip(index)
    lgipp = await nvsmi.lgipp(index)
    return model_from_driver(base, gpu_name, driver_profiles(lgip, lgipp, index))
