"""Performance machinery: load generation, fan-out measurement, worker processes, probes, soak, results."""
