"""Where tailguard runs decides which levers can work there.

`host.platform = "kubernetes"` (the shipped DaemonSet, deploy/kubernetes): the container has a
read-only root, no host systemd and no Kubernetes API access, so it cannot relaunch a tenant (the
systemd launcher writes drop-ins and calls systemctl; a command launcher has nothing to call). A
move and a MIG resize (it relaunches the tenant) cannot work there, and the DaemonSet mounts no MPS
control pipe: those levers are turned off, with a note saying so, and tailguard observes and
guards (I/O caps on the pods' cgroups) only. docs/fleet.md.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from fsm.spec import Policy

if TYPE_CHECKING:
    from controller.config import Config

OFF_IN_KUBERNETES = ("placement", "mig", "mps")


def restrict(cfg: Config, policy: Policy) -> Policy:
    """The policy with the levers the platform cannot run turned off."""
    if cfg.host.platform != "kubernetes":
        return policy
    return replace(policy, placement=False, mig=False, mps=False)  # OFF_IN_KUBERNETES


def notes(cfg: Config) -> list[str]:
    """What the platform turned off, for check-config's output and run's log (empty on a host)."""
    if cfg.host.platform != "kubernetes":
        return []
    out = [
        'host.platform = "kubernetes": no host systemd and a read-only root in the DaemonSet, so tailguard '
        f"observes and guards only; levers off: {', '.join(OFF_IN_KUBERNETES)}"
    ]
    asked = sorted(k for k in cfg.policy.levers.model_fields_set if k in OFF_IN_KUBERNETES and
                   getattr(cfg.policy.levers, k))  # fmt: skip
    if asked:
        out.append(f"policy.levers: {', '.join(asked)} = true is ignored on Kubernetes")
    for i, t in enumerate(cfg.tenants):
        if t.launcher is not None:
            out.append(f"tenants[{i}]({t.name}).launcher: unused on Kubernetes (no moves or resizes there)")
    return out
