"""SIGTERM stops processing even when its main thread is stuck inside a C call."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.unit

# A stand-in for processing's main(): the main thread blocks on a lock, the way it blocks
# inside librdkafka's send_offsets_to_transaction, where Python signal handlers never run.
_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    from processing._main import _stop_on_signals

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    released = threading.Event()

    # "late": like Quix's run(), which marks itself running only once its loop starts and
    # so undoes a stop() that came before (a SIGTERM in the first second).
    running = threading.Timer(1.0, lambda: None)
    running.start()

    class App:
        def stop(self, fail=False):
            if sys.argv[2] == "clean" or (sys.argv[2] == "late" and not running.is_alive()):
                released.set()

    _stop_on_signals(App(), float(sys.argv[1]))
    print("ready", flush=True)
    released.wait()
    print("stopped cleanly", flush=True)
    """
)


def run_and_terminate(mode: str, timeout_s: float) -> tuple[int, str, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(timeout_s), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err, time.monotonic() - began


def test_a_stop_that_hangs_exits_with_code_70() -> None:
    code, out, err, took = run_and_terminate("stuck", 1.0)
    assert code == 70, err
    assert "SIGTERM received; stopping" in err
    assert "did not stop within 1 s" in err
    assert "stopped cleanly" not in out
    assert 0.9 < took < 20


def test_a_stop_that_finishes_is_not_cut_short() -> None:
    code, out, err, _ = run_and_terminate("clean", 5.0)
    assert code == 0, err
    assert "stopped cleanly" in out


def test_a_stop_before_the_app_runs_its_loop_is_not_lost() -> None:
    code, out, err, took = run_and_terminate("late", 10.0)
    assert code == 0, err
    assert "stopped cleanly" in out
    assert took < 5
