"""The MQTT filters this client id's session holds, kept in a file across restarts.

Ingest's session outlives the process, and so do its subscriptions. MQTT has no way to
list them, so a filter that the rules no longer have (a removed rule, a renamed or
removed ``share_group``) stayed subscribed until the session expired: a renamed share
group delivered every message twice. Each process therefore writes the filters it
subscribed to, and the next process under the same client id unsubscribes from those
its rules dropped.

The file is a convenience, not the source of truth: when it is missing or unreadable,
ingest runs as before (and says so), and an unsubscribe from a filter the session does
not hold is harmless.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import orjson

from ingest._rules import valid_levels

_log = logging.getLogger(__name__)

_MAX_TOPIC_BYTES = 65_535


def valid_filter(subscription: str) -> bool:
    """Whether ``subscription`` is a filter the broker accepts (plain or ``$share/g/…``).

    The record is read back from a file anyone may edit: an invalid filter made paho
    raise (or the broker disconnect) at every start, before the record could be fixed.
    """
    if subscription.startswith("$share/"):
        group, _, subscription = subscription[len("$share/") :].partition("/")
        if not group or any(c in group for c in "+#"):
            return False
    encoded = subscription.encode("utf-8", "surrogatepass")
    if not subscription or "\0" in subscription or len(encoded) > _MAX_TOPIC_BYTES:
        return False
    return valid_levels(subscription)


class SubscriptionRecord:
    """The file of one client id's subscribed filters.

    Args:
        state_dir: Folder of the records (created when first written).
        client_id: The MQTT client id whose session the filters belong to.
    """

    def __init__(self, state_dir: Path, client_id: str) -> None:
        # Any string can be a client id; quoting keeps it one file name.
        self.path = state_dir / f"subscriptions-{quote(client_id, safe='')}.json"

    def load(self) -> frozenset[str] | None:
        """The filters written last; None when there is no record, empty when unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            _log.warning("cannot read %s (%s): stale subscriptions stay", self.path, exc)
            return frozenset()
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            _log.warning("%s is not JSON (%s): stale subscriptions stay", self.path, exc)
            return frozenset()
        filters = value.get("filters") if isinstance(value, dict) else None
        if not isinstance(filters, list):
            _log.warning("%s has no list of filters: stale subscriptions stay", self.path)
            return frozenset()
        bad = [f for f in filters if not (isinstance(f, str) and valid_filter(f))]
        if bad:
            _log.warning("%s: ignoring entries that are not MQTT filters: %r", self.path, bad)
        return frozenset(f for f in filters if f not in bad)

    def save(self, filters: Iterable[str]) -> bool:
        """Replace the record with ``filters``; False (and a warning) when it cannot.

        Written to a temporary file and renamed, so a crash leaves the old record or
        the new one, never half of one.
        """
        body = orjson.dumps({"filters": sorted(filters)})
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())  # a crash of the machine: the old record or the new
            os.replace(tmp, self.path)
        except OSError as exc:
            _log.warning(
                "cannot write %s (%s): a filter removed from the rules later will stay "
                "subscribed in the MQTT session",
                self.path,
                exc,
            )
            return False
        return True
