"""Quix Streams per-car processing (not built yet)."""
