"""Offline archive, training and model registry (not built yet)."""
