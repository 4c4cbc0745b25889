"""Fixtures of the dashboard unit tests."""

from __future__ import annotations

import pytest

from .fleet_data import Recording, record_simulated_fleet, small_fleet


@pytest.fixture(scope="session")
def recorded() -> Recording:
    """The simulated fleet (10 cars, 8 h at 0.2 Hz) through processing's functions."""
    return record_simulated_fleet()


@pytest.fixture
def small() -> Recording:
    """The hand-made three-car fleet."""
    return small_fleet()
