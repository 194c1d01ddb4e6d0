"""Plan a MIG layout change as the fewest destroy / create steps the GPU's placement rules allow.

Every instance in `before` but not in `after` must be destroyed and every one in `after` but not
in `before` created, so that many steps is the minimum. Destroying first keeps each intermediate
layout a subset of a valid layout (`after`, or `before` when rolling back), hence valid itself
under fsm.mig's rules (the single source of truth). Creates go largest first, as NVIDIA advises.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fsm.mig import GpuModel, Layout, Slot, layout_problems, normalise


class PlanError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class MigPlan:
    gpu: str
    before: Layout
    after: Layout
    destroy: tuple[Slot, ...]
    create: tuple[Slot, ...]

    @property
    def empty(self) -> bool:
        return not self.destroy and not self.create

    def ops(self) -> list[str]:
        return [f"{self.gpu}: destroy {s}" for s in self.destroy] + [f"{self.gpu}: create {s}" for s in self.create]


def plan(gpu: str, model: GpuModel, before: Iterable[Slot], after: Iterable[Slot]) -> MigPlan:
    b, a = normalise(before), normalise(after)
    problems = layout_problems(model, a)
    if problems:
        raise PlanError(f"{gpu}: target layout {', '.join(map(str, a)) or '(empty)'} is not valid on "
                        f"{model.key}: {'; '.join(problems)}")  # fmt: skip
    keep = set(b) & set(a)
    destroy = tuple(s for s in b if s not in keep)
    new = (s for s in a if s not in keep)
    create = tuple(sorted(new, key=lambda s: (-model.profile(s.profile).mem_slots, s.start)))
    # Check every intermediate step explicitly: cheap, and it guards the argument above.
    cur = [s for s in b if s in keep]
    for s in create:
        cur.append(s)
        if layout_problems(model, cur):
            raise PlanError(f"{gpu}: step 'create {s}' would give an invalid layout")
    return MigPlan(gpu, b, a, destroy, create)
