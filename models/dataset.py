"""Read archived (Parquet) or simulated (JSON lines) telemetry and labels for offline work.

The archive is at-least-once, so :func:`load_telemetry` drops repeated
``(vehicle_id, seq, ts)`` records (``(vehicle_id, ts)`` for records without a ``seq``),
keeping the first, and orders the rows by event time.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pj

from models.archive import TELEMETRY
from models.errors import DataError

_log = logging.getLogger("models.dataset")
_COLUMNS = [n for n in TELEMETRY.schema.names if n != "extra"]
_PARTITIONING = ds.partitioning(
    pa.schema([("date", pa.string()), ("powertrain", pa.string())]), flavor="hive"
)


def _files(path_or_glob: str) -> list[str]:
    path = Path(path_or_glob)
    if path.is_dir():
        found = sorted(str(p) for p in path.rglob("*") if p.suffix in {".parquet", ".jsonl"})
    elif path.is_file():
        found = [str(path)]
    else:
        found = sorted(glob.glob(path_or_glob, recursive=True))
    if not found:
        msg = f"no .parquet or .jsonl files at {path_or_glob}"
        raise DataError(msg)
    return found


def _read_jsonl(path: str) -> pa.Table:
    # Type the columns from the contract so JSON and Parquet give the same table.
    schema = TELEMETRY.schema.remove(TELEMETRY.schema.get_field_index("extra"))
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return pj.read_json(path, parse_options=options)


def load_telemetry(path_or_glob: str) -> pa.Table:
    """Telemetry rows from Parquet archives and/or JSON-lines files, deduplicated, in ts order.

    Args:
        path_or_glob: An archive folder (hive-partitioned, e.g. ``archive/telemetry``), a
            file, or a glob.

    Raises:
        DataError: Nothing to read, or files that do not hold telemetry.
    """
    files = _files(path_or_glob)
    parquet = [f for f in files if f.endswith(".parquet")]
    tables: list[pa.Table] = []
    try:
        if parquet:
            dataset = ds.dataset(parquet, format="parquet", partitioning=_PARTITIONING)
            tables.append(dataset.to_table(columns=_COLUMNS))
        tables += [_read_jsonl(f) for f in files if f.endswith(".jsonl")]
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
        msg = f"cannot read telemetry from {path_or_glob}: {exc}"
        raise DataError(msg) from exc
    return dedupe(table)


def dedupe(table: pa.Table) -> pa.Table:
    """Keep the first row per (vehicle_id, seq, ts), then order by ts.

    At-least-once duplicates are the same record, so they agree on all three. Rows that
    share the key but differ in content are dropped too, with a warning giving their count. ``seq``
    alone is not enough: a device or simulator run that restarts ``seq`` at 0 reuses
    every number, and deduping on ``(vehicle_id, seq)`` silently dropped all its later
    data. Records without a ``seq`` are deduped on ``(vehicle_id, ts)``.
    """
    keys = pd.DataFrame(
        {
            "vehicle_id": table.column("vehicle_id").to_pandas(),
            # Nulls as -1 (seq is never negative): pandas would make the column float.
            "seq": pc.fill_null(table.column("seq").cast(pa.int64()), -1).to_pandas(),
            "ts": table.column("ts").to_pandas(),
        }
    )
    repeated = keys.duplicated(keep=False).to_numpy()
    if repeated.any():
        _warn_if_different(table, keys, repeated)
    keep = (~keys.duplicated()).to_numpy().nonzero()[0]
    table = table.take(pa.array(keep))
    return table.sort_by([("ts", "ascending"), ("vehicle_id", "ascending")])


def _warn_if_different(table: pa.Table, keys: pd.DataFrame, repeated: np.ndarray) -> int:
    """Log (and return) how many dropped rows differ from the row kept for their key.

    Such rows are no at-least-once duplicates: e.g. two simulator runs with different
    seeds and the same start time share every key, and all but the first are dropped
    while their labels still apply.
    """
    rows = repeated.nonzero()[0]
    content = table.take(pa.array(rows)).to_pandas()
    digests = pd.Series(pd.util.hash_pandas_object(content, index=False).to_numpy())
    group = keys.iloc[rows].reset_index(drop=True)
    first = digests.groupby([group[c] for c in group.columns]).transform("first")
    differ = int((digests != first).sum())
    if differ:
        where = group[(digests != first).to_numpy()].iloc[0].to_dict()
        _log.warning(
            "dropped %d row(s) that share (vehicle_id, seq, ts) with an earlier row but "
            "differ from it (e.g. %s): not at-least-once duplicates but other data, such "
            "as two simulator runs with the same start time; kept the first of each",
            differ,
            where,
        )
    return differ


def _values(column: pa.Array) -> list[Any]:
    """A column as Python values, nulls as None.

    Numbers go through NumPy's ``tolist()``: pyarrow's ``to_pylist()`` builds each value
    through a scalar object, and on a week of telemetry that made reading the rows take
    longer than replaying them through the detectors (25 vs 9-12 µs per record).
    """
    kind = column.type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return column.to_pylist()  # type: ignore[no-any-return]
    if column.null_count == 0:
        return column.to_numpy().tolist()  # type: ignore[no-any-return]
    # With nulls, NumPy would make an integer column float: fill, convert, then mask.
    values = pc.fill_null(column, 0).to_numpy().tolist()
    valid = column.is_valid().to_numpy(zero_copy_only=False).tolist()
    return [v if ok else None for v, ok in zip(values, valid, strict=True)]


def iter_records(table: pa.Table, batch_rows: int = 50_000) -> Iterator[dict[str, Any]]:
    """Rows as record dicts (nulls as None), in table order."""
    names = table.column_names
    for batch in table.to_batches(max_chunksize=batch_rows):
        columns = [_values(column) for column in batch.columns]
        yield from (dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True))


LABEL_COLUMNS: Final = ["vehicle_id", "kind", "start_ts", "end_ts", "magnitude"]


def read_json_lines(path: Path, what: str) -> list[dict[str, Any]]:
    """Every JSON value of a JSON-lines file (blank lines skipped).

    Raises:
        DataError: The file is missing or a line is not JSON.
    """
    try:
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    except (OSError, orjson.JSONDecodeError) as exc:
        msg = f"cannot read {what} {path}: {exc}"
        raise DataError(msg) from exc


def load_labels(path: Path) -> pd.DataFrame:
    """Labels JSON lines (``fleetstream simulate --labels``) as a DataFrame.

    Raises:
        DataError: The file is missing or a line is not a label.
    """
    frame = pd.DataFrame(read_json_lines(path, "labels"), columns=LABEL_COLUMNS)
    if frame[["vehicle_id", "kind", "start_ts", "end_ts"]].isna().any().any():
        msg = f"labels {path}: every label needs vehicle_id, kind, start_ts and end_ts"
        raise DataError(msg)
    return frame
