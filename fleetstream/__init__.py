"""fleetstream: the CLI and the local broker stack."""
