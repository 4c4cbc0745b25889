"""The Dockerfile's install steps, run for real on this machine (there is no Docker engine).

The build stage's ``uv sync`` commands are taken from the Dockerfile as written and run
against a copy of exactly what its ``COPY`` lines bring in, into a fresh virtualenv. That
proves the lock installs with ``--frozen --no-dev``, the project installs non-editable
with its data files (the packaged ingest rules), and the ``fleetstream`` entrypoint runs
every compose command's subcommand. Not proven: the base image, the user and file
ownership, the image size (the virtualenv's size is reported instead).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ..deploy_checks import REPO, command_of, resolved_compose

pytestmark = pytest.mark.integration

_log = logging.getLogger(__name__)


def build_stage() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile's first stage."""
    text = (REPO / "Dockerfile").read_text("utf-8").replace("\\\n", " ")
    steps: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        op, _, rest = line.strip().partition(" ")
        if op.upper() == "FROM" and steps:
            break
        steps.append((op.upper(), " ".join(rest.split())))
    return steps


def find_uv() -> str:
    uv = shutil.which("uv") or str(REPO / ".cache" / "tools" / "bin" / "uv")
    if not Path(uv).is_file():
        pytest.fail("uv not found: run `bash scripts/setup.sh`")
    return uv


def test_dockerfile_install_steps_produce_a_working_fleetstream(tmp_path: Path) -> None:
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    env = {**os.environ, "UV_PYTHON": os.environ.get("FLEETSTREAM_PYTHON", "python3")}
    for key in [k for k in env if k.startswith(("UV_", "VIRTUAL_ENV"))]:
        env.pop(key)
    ran = []
    try:
        for op, rest in build_stage():
            if op == "ENV":
                for assignment in shlex.split(rest):
                    key, _, value = assignment.partition("=")
                    env[key] = value
                env["UV_PROJECT_ENVIRONMENT"] = str(venv)  # not /opt/venv on this machine
                # The image build has no cache to keep; here the cache setup.sh filled
                # saves downloading every wheel again.
                env.pop("UV_NO_CACHE", None)
            elif op == "COPY":
                *sources, _dest = rest.split()
                for source in sources:
                    path = REPO / source
                    if path.is_dir():
                        shutil.copytree(
                            path, src / source, ignore=shutil.ignore_patterns("__pycache__")
                        )
                    else:
                        shutil.copy2(path, src / source)
            elif op == "RUN" and " uv sync " in f" {rest} ":
                args = [a for a in shlex.split(rest) if not a.startswith("--mount=")]
                assert args[:2] == ["uv", "sync"], rest
                result = subprocess.run(
                    [find_uv(), *args[1:], "--quiet"],
                    cwd=src,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                )
                assert result.returncode == 0, f"{rest}:\n{result.stderr}"
                ran.append(rest)
        assert len(ran) == 2, f"expected the dependency and the project sync, ran {ran}"

        fleetstream = venv / "bin" / "fleetstream"
        clean = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
        # The installed package, not the copied source: run from an unrelated folder.
        check = subprocess.run(
            [str(fleetstream), "ingest", "--check"],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert "vehicle-telemetry" in check.stdout
        not_dev = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import pytest"],
            cwd=tmp_path,
            env=clean,
            capture_output=True,
            check=False,
        )
        assert not_dev.returncode != 0, "--no-dev installed the dev group"
        for name, service in resolved_compose()["services"].items():
            if service.get("image") != "fleetstream:local":
                continue
            subcommand = command_of(service)[0]
            if subcommand == "dashboard":
                continue  # comes from the dashboard branch; the unit test covers it
            result = subprocess.run(
                [str(fleetstream), subcommand, "--help"],
                cwd=tmp_path,
                env=clean,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert result.returncode == 0, f"{name}: {result.stderr}"
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file())
        _log.info("image virtualenv: %.0f MiB", size / 2**20)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
