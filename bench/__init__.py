"""``fleetstream bench``: throughput and latency on the real local brokers, next to baselines.

Every figure is measured next to a baseline run on the same machine in the same
invocation and reported as a ratio, because shared machines drift.
"""
