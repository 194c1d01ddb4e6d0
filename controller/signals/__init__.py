"""Samplers: the imperative shell's eyes. Each sampler reads one source (NVML, DCGM, /proc,
cgroupfs, a latency endpoint) under its own timeout and returns a typed result or `Unavailable`;
`collect.SignalCollector` runs them all concurrently and assembles one `fsm.observation.Observation`.
"""
