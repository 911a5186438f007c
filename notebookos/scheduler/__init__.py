"""The cluster scheduler: cluster state (``cluster``), policies (``policy``, ``policies/``), the live service and
host daemon, and the trace-driven simulator (``sim/``) that drives the same policy objects in simulated time."""
