"""One processing instance per state folder, with a transactional id that survives restarts.

Quix gives every start a random ``transactional.id``. After a ``kill -9`` the dead
process's open Kafka transaction then stays open until the broker times it out (60 s),
and until then the group's committed offsets are unstable: the restarted process waits
for them, and librdkafka starts the assigned partitions late. Quix's state recovery
seeks changelog partitions right after its own committed-offsets call returns, and a
seek on a partition librdkafka has not started yet fails with ``_STATE`` ("Erroneous
state"), which ended the restarted process (docs/faults.md). A transactional id that
is the same after a restart lets the new producer fence the dead one at start, which
aborts its transaction at once.

Two live producers with one transactional id fence each other, so the id must be unique
among running instances. The default is derived from the host name and the absolute
state folder, and an exclusive lock on the state folder makes a second instance on the
same host with the same folder fail at start instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from telemetry.errors import FleetstreamError

LOCK_NAME: Final = ".instance.lock"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")


class InstanceError(FleetstreamError):
    """Another processing instance already holds this state folder."""


@dataclass(frozen=True, slots=True)
class InstanceClaim:
    """A held state folder and the name of the instance that holds it.

    Attributes:
        instance_id: Stable name of this instance (host and state folder, or configured).
        lock_fd: Descriptor holding the folder's lock; closing it releases the folder.
    """

    instance_id: str
    lock_fd: int

    def release(self) -> None:
        """Release the state folder's lock."""
        os.close(self.lock_fd)


def transactional_id(consumer_group: str, instance_id: str) -> str:
    """The exactly-once producer's ``transactional.id`` of an instance in a group."""
    return f"{consumer_group}.{instance_id}"


def default_instance_id(state_dir: Path, host: str | None = None) -> str:
    """``<host>-<8 hex digits of the absolute state folder>``, safe in a Kafka id."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    name = _UNSAFE.sub("-", host if host is not None else socket.gethostname()).strip("-")
    return f"{name or 'host'}-{digest}"


def claim_instance(state_dir: Path, configured: str | None = None) -> InstanceClaim:
    """Lock ``state_dir`` for this process and name the instance.

    Args:
        state_dir: The instance's RocksDB state folder (created if missing).
        configured: An explicit instance id; ``None`` derives one from host and folder.

    Returns:
        The claim; keep it for the life of the process.

    Raises:
        InstanceError: Another live process holds the folder's lock.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        msg = (
            f"another processing instance uses the state folder {state_dir}; give every "
            "instance its own FLEETSTREAM_PROCESSING_STATE_DIR"
        )
        raise InstanceError(msg) from None
    return InstanceClaim(configured or default_instance_id(state_dir), fd)
