"""The imperative shell that changes the host: cgroup I/O caps, MIG layouts, MPS limits, tenant
moves, all driven declaratively by `actuators.reconciler.Reconciler` and recorded in a journal."""
