"""What the daemon shows the world: a per-tick Snapshot read by the Prometheus collector, the
MQTT bridge and the status file."""
