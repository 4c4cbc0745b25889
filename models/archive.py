"""Archive Kafka topics to Parquet: typed columns, hive partitions, few large files.

Layout under the archive root::

    <root>/<table>/date=YYYY-MM-DD/powertrain=ev/part-<time>-<id>.parquet

``<table>`` is ``telemetry`` (validated ``vehicle-telemetry`` records, one column per
contract field plus ``extra`` for unknown fields as JSON) or ``stats`` (``vehicle-stats``
windows). Rows are buffered as Arrow batches and written when the buffer holds
``max_rows`` rows or is ``max_age_s`` old; Kafka offsets are committed only after the
files are on disk (renamed into place), so the archive is at-least-once: a crash between
write and commit rewrites some records. Readers dedupe (see :mod:`models.dataset`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, get_type_hints

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from models.metrics import ArchiveMetrics
from processing.stats import WindowStats
from telemetry.contract import (
    ALL_FIELDS,
    COMMON_FIELDS,
    EV_FIELDS,
    ICE_FIELDS,
    NUMBER_FIELDS,
    POWERTRAINS,
    TEXT_FIELDS,
    ContractError,
    Problem,
    decode,
    parse,
)

_log = logging.getLogger("models.archive")

_BATCH_ROWS: Final = 10_000


_STATS_KEYS: Final = frozenset({"vehicle_id", "powertrain", "window_start", "window_end"})
# The columns a record of each powertrain fills: v1 checks only the record's own
# powertrain's fields, so the other powertrain's are unknown fields like any other.
_KNOWN: Final = {
    "ev": frozenset((*COMMON_FIELDS, *EV_FIELDS)),
    "ice": frozenset((*COMMON_FIELDS, *ICE_FIELDS)),
}
# Conversions of a row to the table's columns that can fail (pyarrow's errors derive
# from ArrowException, ValueError or TypeError).
_ARROW_ERRORS: Final = (pa.ArrowException, ValueError, TypeError, OverflowError)
_NOT_NULL: Final = frozenset({"schema", "vehicle_id", "ts", "powertrain", "state"})


def _telemetry_schema() -> pa.Schema:
    fields: list[pa.Field] = []
    for name in ALL_FIELDS:
        if name in TEXT_FIELDS and name != "schema":
            kind = pa.string()
        elif name == "schema":
            kind = pa.int16()
        else:
            kind = pa.int64() if NUMBER_FIELDS[name].integer else pa.float64()
        fields.append(pa.field(name, kind, nullable=name not in _NOT_NULL))
    fields.append(pa.field("extra", pa.string()))
    return pa.schema(fields)


def _stats_schema() -> pa.Schema:
    types = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    fields = []
    for name, hint in get_type_hints(WindowStats).items():
        base = next(a for a in getattr(hint, "__args__", (hint,)) if a is not type(None))
        fields.append(pa.field(name, types[base], nullable=name not in _STATS_KEYS))
    return pa.schema(fields)


STATS_SCHEMA: Final = _stats_schema()


@dataclass(frozen=True, slots=True)
class TableSpec:
    """How one topic's records become Parquet rows."""

    name: str
    schema: pa.Schema
    time_field: str
    to_row: Callable[[bytes], dict[str, Any]]


def telemetry_row(value: bytes) -> dict[str, Any]:
    """A validated telemetry record as a row; unknown fields go to ``extra`` as JSON.

    Unknown fields include the other powertrain's (``power_kw`` on an ICE record): v1 does
    not check them, so they cannot be typed columns. As columns, one such field with a
    string value failed the whole buffer's Arrow conversion and stopped the archiver at
    every restart, and ``true`` was stored as 1.0.

    Raises:
        ContractError: The value is not a valid v1 record.
    """
    record: dict[str, Any] = dict(parse(value, require_seq=False))
    unknown = record.keys() - _KNOWN[record["powertrain"]]
    record["extra"] = (
        orjson.dumps({k: record.pop(k) for k in sorted(unknown)}).decode() if unknown else None
    )
    return record


def stats_row(value: bytes) -> dict[str, Any]:
    """A ``vehicle-stats`` record as a row.

    Raises:
        ContractError: The value is not a stats record.
    """
    row = decode(value)
    if type(row) is not dict or not row.keys() >= _STATS_KEYS:
        detail = "not a vehicle-stats record"
        raise ContractError(Problem.NOT_OBJECT, None, detail)
    # Checked per row: one wrong type used to fail the whole buffer at flush, crashing the
    # archiver again after every restart (its offsets were never committed).
    for column in STATS_SCHEMA:
        _check_stats_value(column, row.get(column.name))
    if row["powertrain"] not in POWERTRAINS:
        detail = f"powertrain {row['powertrain']!r} is not one of {', '.join(POWERTRAINS)}"
        raise ContractError(Problem.BAD_VALUE, "powertrain", detail)
    try:
        # The columns are scalars, checked above; the partition's date is what is left.
        _day(row["window_start"])
    except (ValueError, OverflowError, OSError) as exc:
        detail = f"does not fit the stats table: {exc}"
        raise ContractError(Problem.WRONG_TYPE, None, detail) from exc
    return row


_INT64: Final = range(-(2**63), 2**63)
# Integers a float64 column takes: pyarrow refuses any it cannot hold exactly.
_EXACT_IN_FLOAT64: Final = range(-(2**53), 2**53 + 1)


def _check_stats_value(column: pa.Field, value: Any) -> None:
    """Raise ContractError unless ``value`` fits ``column`` of the stats table."""
    name = column.name
    if value is None:
        if column.nullable:
            return
        raise ContractError(Problem.NULL, name, "must not be null")
    kind = column.type
    if pa.types.is_string(kind):
        ok = isinstance(value, str)
    elif isinstance(value, bool):
        ok = False  # JSON true is no number
    elif pa.types.is_integer(kind):
        ok = isinstance(value, int) and value in _INT64
    else:
        ok = isinstance(value, float) or (isinstance(value, int) and value in _EXACT_IN_FLOAT64)
    if not ok:
        detail = f"{value!r} is not a {kind} value"
        raise ContractError(Problem.WRONG_TYPE, name, detail)


TELEMETRY: Final = TableSpec("telemetry", _telemetry_schema(), "ts", telemetry_row)
STATS: Final = TableSpec("stats", STATS_SCHEMA, "window_start", stats_row)
TABLES: Final = {"telemetry": TELEMETRY, "stats": STATS}


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d")


@dataclass
class _Buffer:
    rows: list[dict[str, Any]] = field(default_factory=list)
    batches: list[pa.RecordBatch] = field(default_factory=list)
    count: int = 0


class ParquetArchive:
    """Buffers rows per (date, powertrain) partition and writes them as Parquet files.

    Args:
        root: Archive root folder.
        spec: The table the rows belong to.
        max_rows: Write when this many rows are buffered (all partitions together).
        max_age_s: Write when the oldest buffered row is this old.
        clock: Monotonic clock (seconds), injectable for tests.
        on_refused: Called with the reason of each row that does not fit the table's
            columns (it is logged and left out; the other rows are written).
    """

    def __init__(  # noqa: PLR0917 - the tunables, then the injectables
        self,
        root: Path,
        spec: TableSpec,
        max_rows: int = 1_000_000,
        max_age_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        on_refused: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        self.root = root
        self.spec = spec
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._clock = clock
        self._on_refused = on_refused
        self.rows_refused = 0
        self._buffers: dict[tuple[str, str], _Buffer] = defaultdict(_Buffer)
        self._rows = 0
        self._since: float | None = None
        self.files_written = 0
        self.rows_written = 0

    @property
    def buffered(self) -> int:
        """Rows not yet on disk."""
        return self._rows

    def add(self, row: dict[str, Any]) -> None:
        """Buffer one row (converted to Arrow every few thousand rows to keep memory small)."""
        key = (_day(row[self.spec.time_field]), row["powertrain"])
        buffer = self._buffers[key]
        buffer.rows.append(row)
        buffer.count += 1
        self._rows += 1
        if self._since is None:
            self._since = self._clock()
        if len(buffer.rows) >= _BATCH_ROWS:
            self._convert(buffer)

    def _convert(self, buffer: _Buffer) -> None:
        """Move a buffer's rows into an Arrow batch, leaving out rows that do not fit.

        The table specs check their rows when they are read, so a refusal here means a
        check missed something. It is logged and counted, never raised: an exception
        here used to stop the archiver before its commit, and every restart read the
        same record again, wrote the same files again and stopped again.
        """
        rows, buffer.rows = buffer.rows, []
        try:
            batch = pa.RecordBatch.from_pylist(rows, schema=self._schema)
        except _ARROW_ERRORS:
            kept = [row for row in rows if self._fits(row)]
            batch = pa.RecordBatch.from_pylist(kept, schema=self._schema)
        buffer.batches.append(batch)

    def _fits(self, row: dict[str, Any]) -> bool:
        """Whether ``row`` converts to the table's columns; if not, refuse it."""
        try:
            pa.RecordBatch.from_pylist([row], schema=self._schema)
        except _ARROW_ERRORS as exc:
            reason = f"does_not_fit: {type(exc).__name__}: {str(exc)[:200]}"
            self.rows_refused += 1
            self._rows -= 1
            _log.warning(
                "not archiving a %s row (vehicle_id %r, %s %r) that does not fit the "
                "table's columns: %s",
                self.spec.name,
                row.get("vehicle_id"),
                self.spec.time_field,
                row.get(self.spec.time_field),
                reason,
            )
            self._on_refused(reason)
            return False
        return True

    @property
    def _schema(self) -> pa.Schema:
        # Partition columns live in the folder names, not in the files.
        schema = self.spec.schema
        return schema.remove(schema.get_field_index("powertrain"))

    def oldest_age_s(self) -> float:
        """Seconds the oldest buffered row has waited; 0 when nothing is buffered."""
        return 0.0 if self._since is None else self._clock() - self._since

    def due(self) -> bool:
        """True when the buffer should be written (size or age)."""
        if self._since is None:
            return False
        return self._rows >= self.max_rows or self._clock() - self._since >= self.max_age_s

    def flush(self) -> list[Path]:
        """Write every buffered partition as one new file each; returns the files."""
        written: list[Path] = []
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        for (day, powertrain), buffer in sorted(self._buffers.items()):
            if buffer.rows:
                self._convert(buffer)
            table = pa.Table.from_batches(buffer.batches, schema=self._schema)
            if table.num_rows == 0:
                continue  # every row of the partition was refused
            folder = self.root / self.spec.name / f"date={day}" / f"powertrain={powertrain}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = folder / f".{path.name}.tmp"
            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, path)  # readers never see a half-written file
            written.append(path)
            self.rows_written += table.num_rows
        self.files_written += len(written)
        self._buffers.clear()
        self._rows = 0
        self._since = None
        return written


@dataclass(frozen=True, slots=True)
class ArchiveReport:
    """What one archive run did."""

    rows: Mapping[str, int]
    files: int
    skipped: int
    seconds: float


def archive_topics(  # noqa: PLR0917 - CLI options passed through
    kafka_config: dict[str, Any],
    topics: Mapping[str, TableSpec],
    root: Path,
    group: str = "fleetstream-archive",
    max_rows: int = 1_000_000,
    max_age_s: float = 600.0,
    idle_exit_s: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    metrics: ArchiveMetrics | None = None,
) -> ArchiveReport:
    """Consume ``topics`` and write them under ``root`` until stopped or idle.

    Offsets are committed (synchronously) only after a flush, so every committed record is
    in a file. Invalid values (already quarantined upstream) are counted and logged, not
    archived; so are rows that pass the checks but still do not fit the table's columns
    (:class:`ParquetArchive` leaves them out), so no record can stop the archiver.

    Args:
        kafka_config: librdkafka settings (bootstrap, security).
        topics: Kafka topic name -> table spec.
        root: Archive root folder.
        group: Consumer group (its committed offsets are the archive's progress).
        max_rows: Rows per flush (all partitions).
        max_age_s: Longest time a row waits in memory.
        idle_exit_s: Exit after this long without records (batch jobs); None runs forever.
        stop: Polled; True flushes, commits and returns.
        metrics: Where rows, files, skipped records and Kafka errors are counted.
    """
    from confluent_kafka import (  # noqa: PLC0415 - keep offline imports light
        Consumer,
        KafkaError,
        KafkaException,
    )

    m = metrics or ArchiveMetrics()

    def on_error(error: KafkaError) -> None:
        # Broker-level trouble (all brokers down, connection lost) reaches only this
        # callback, never consume().
        m.kafka_errors.labels(reason=error.name()).inc()
        if error.fatal() or error.code() in (
            KafkaError._ALL_BROKERS_DOWN,  # noqa: SLF001 - librdkafka's public codes
            KafkaError._TRANSPORT,  # noqa: SLF001
        ):
            m.kafka_up.set(0)
        _log.warning("kafka: %s", error)

    skipped = 0

    def refused(table: str) -> Callable[[str], None]:
        def count(_reason: str) -> None:
            nonlocal skipped
            skipped += 1
            m.skipped.labels(table=table).inc()

        return count

    archives = {
        topic: ParquetArchive(
            root, spec, max_rows=max_rows, max_age_s=max_age_s, on_refused=refused(spec.name)
        )
        for topic, spec in topics.items()
    }
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            # A killed archiver's partitions move to its successor after this long.
            "session.timeout.ms": 15_000,
            "error_cb": on_error,
        }
    )
    assigned: list[bool] = []

    def flush_all(*_args: Any) -> None:
        for archive in archives.values():
            # Due with nothing buffered: every row since the last flush was refused. The
            # flush resets its age (it stayed due, a commit every loop) and commits them.
            if archive.buffered or archive.due():
                before = archive.rows_written
                files = archive.flush()
                m.rows.labels(table=archive.spec.name).inc(archive.rows_written - before)
                m.files.labels(table=archive.spec.name).inc(len(files))
                if files:
                    _log.info("wrote %d file(s) for %s", len(files), archive.spec.name)
        m.buffered.set(0)
        m.oldest_buffered.set(0)
        try:
            # The stored offsets, not named: from on_revoke (inside consume()) they cover
            # only batches already returned and buffered (librdkafka >= 2.1, #4208).
            consumer.commit(asynchronous=False)
        except KafkaException as exc:
            # _NO_OFFSET (librdkafka's own code, public despite the underscore): nothing new.
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # noqa: SLF001
                # The files are on disk: a restart re-reads these records (duplicates that
                # readers drop), so this is loud but not fatal.
                m.kafka_errors.labels(reason="commit").inc()
                _log.warning("offset commit failed (records will be archived again): %s", exc)
            return
        m.last_commit.set(time.time())
        m.kafka_up.set(1)

    def on_assign(_consumer: Any, partitions: list[Any]) -> None:
        assigned.append(True)
        if partitions:
            m.kafka_up.set(1)

    # A rebalance hands partitions to another archiver: write and commit first.
    consumer.subscribe(list(topics), on_assign=on_assign, on_revoke=flush_all)
    started = time.monotonic()
    last = started
    try:
        while not stop():
            messages = consumer.consume(1000, 0.5)
            for message in messages:
                error = message.error()
                if error is not None:
                    m.kafka_errors.labels(reason=error.name()).inc()
                    m.kafka_up.set(0)
                    _log.warning("kafka: %s", error)
                    continue
                topic = message.topic()
                archive = archives[topic]
                try:
                    archive.add(archive.spec.to_row(message.value() or b""))
                except ContractError as exc:
                    skipped += 1
                    m.skipped.labels(table=archive.spec.name).inc()
                    _log.warning("not archiving an invalid %s record: %s", topic, exc)
                last = time.monotonic()
            if any(message.error() is None for message in messages):
                m.kafka_up.set(1)
            m.buffered.set(sum(a.buffered for a in archives.values()))
            m.oldest_buffered.set(max(a.oldest_age_s() for a in archives.values()))
            if any(a.due() for a in archives.values()):
                flush_all()
            if not assigned:
                # Joining the group can take a session timeout after a crash: being idle
                # only counts once partitions are ours.
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                break
        flush_all()
    finally:
        consumer.close()
    return ArchiveReport(
        rows={a.spec.name: a.rows_written for a in archives.values()},
        files=sum(a.files_written for a in archives.values()),
        skipped=skipped,
        seconds=time.monotonic() - started,
    )
