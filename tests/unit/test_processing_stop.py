"""A stop that hangs (a stuck Kafka transaction operation) ends the process in bounded time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.unit

_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from processing._main import _bound_stop

    class StuckApp:
        def stop(self, fail=False):
            time.sleep(60)  # what a blocked send_offsets_to_transaction looks like

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    app = StuckApp()
    _bound_stop(app, float(sys.argv[1]))
    app.stop()
    print("stop returned")
    """
)


def test_a_stop_that_hangs_exits_with_code_70() -> None:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "0.5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    took = time.monotonic() - began
    assert done.returncode == 70, done.stderr
    assert "did not stop within" in done.stderr
    assert "stop returned" not in done.stdout
    assert took < 20


def test_a_stop_that_finishes_is_not_cut_short() -> None:
    script = _SCRIPT.replace("time.sleep(60)", "time.sleep(0.2)")
    done = subprocess.run(
        [sys.executable, "-c", script, "5"], check=False, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "stop returned" in done.stdout
