"""Fixtures shared by all tests."""

from __future__ import annotations

import re
import uuid

import pytest


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A topic/group/client-id-safe name unique to this test invocation."""
    base = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name)[:40].strip("-")
    return f"t-{base}-{uuid.uuid4().hex[:8]}"
