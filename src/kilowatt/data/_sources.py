"""Turning what users have (a folder, a Parquet/CSV/Arrow file, numpy arrays, an iterable of
samples) into Arrow record batches, and cutting them into shards of about N bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kilowatt.errors import DataError

__all__ = ["Source", "record_batches", "split_into_shards", "table_to_arrays"]

#: A folder, a file, arrays by column, a table, or samples (dicts of column -> value).
Source = str | Path | Mapping[str, Any] | pa.Table | Iterable[Mapping[str, Any]]

_ROWS_PER_BATCH = 1024


def record_batches(source: Source) -> tuple[str, Iterator[pa.RecordBatch]]:
    """A description of ``source`` and its rows as record batches (one schema)."""
    if isinstance(source, pa.Table):
        return "arrow table", iter(source.to_batches(max_chunksize=_ROWS_PER_BATCH))
    if isinstance(source, Mapping):
        return "arrays", iter(arrays_to_table(source).to_batches(max_chunksize=_ROWS_PER_BATCH))
    if isinstance(source, str | Path):
        return str(source), _path_batches(Path(source))
    if isinstance(source, Iterable):
        return "python iterable", _sample_batches(iter(source))
    raise DataError(
        f"cannot make a data set from a {type(source).__name__}; give a folder, a .parquet, "
        ".csv, .arrow or .npz file, a dict of arrays, or an iterable of dict samples"
    )


def arrays_to_table(arrays: Mapping[str, Any]) -> pa.Table:
    """Columns from arrays; an array with more than one dimension becomes a tensor column."""
    columns: dict[str, pa.Array] = {}
    lengths = set()
    for name, values in arrays.items():
        array = np.asarray(values)
        lengths.add(len(array))
        if array.ndim > 1:
            columns[name] = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(array))
        else:
            columns[name] = pa.array(array)
    if len(lengths) > 1:
        raise DataError(
            f"the arrays have different lengths {sorted(lengths)}; every column needs one "
            "value per sample"
        )
    return pa.table(columns)


def table_to_arrays(table: pa.Table) -> dict[str, Any]:
    """``{column: numpy array}``: tensor columns keep their shape, numbers stay numbers,
    anything else becomes an object array."""
    out: dict[str, Any] = {}
    for name in table.column_names:
        chunks = table.column(name)
        if isinstance(chunks.type, pa.FixedShapeTensorType):
            out[name] = _tensors(chunks.combine_chunks())
        elif _is_number(chunks.type):
            out[name] = _numbers(chunks.combine_chunks())
        else:  # straight from the chunks: combining them first would copy every value twice
            out[name] = np.asarray(chunks.to_pylist(), dtype=object)
    return out


def _is_number(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _numbers(array: pa.Array) -> np.ndarray:
    """A numeric column as numpy, a view of Arrow's buffer when it has no nulls.

    The view also keeps a loader's worker off pyarrow's conversion path, which imports
    pandas (a second or more) on its first use in a process.
    """
    if array.null_count:
        return array.to_numpy(zero_copy_only=False)
    kind = array.type
    code = "f" if pa.types.is_floating(kind) else "i" if pa.types.is_signed_integer(kind) else "u"
    dtype = np.dtype(f"{code}{kind.bit_width // 8}")
    return np.frombuffer(
        array.buffers()[1], dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize
    )


def _tensors(array: pa.ExtensionArray) -> np.ndarray:
    """A fixed-shape tensor column as an ``(rows, *shape)`` array (a view when it can be)."""
    kind = array.type
    shape = list(kind.shape)
    row_major = kind.permutation is None or list(kind.permutation) == list(range(len(shape)))
    values = array.storage.flatten()
    if not row_major or array.storage.null_count or not _is_number(values.type):
        return array.to_numpy_ndarray()
    return _numbers(values).reshape(len(array), *shape)


def _path_batches(path: Path) -> Iterator[pa.RecordBatch]:
    if not path.exists():
        raise DataError(f"{path} does not exist; give an existing folder or file")
    if path.is_dir():
        return _folder_batches(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return iter(pq.ParquetFile(path).iter_batches(batch_size=_ROWS_PER_BATCH))
    if suffix == ".csv":
        import pyarrow.csv as pacsv

        return iter(pacsv.open_csv(path))
    if suffix in (".arrow", ".feather", ".ipc"):
        return iter(pa.ipc.open_file(pa.memory_map(str(path))).read_all().to_batches())
    if suffix == ".npz":
        with np.load(path) as arrays:
            table = arrays_to_table({k: arrays[k] for k in arrays.files})
        return iter(table.to_batches(max_chunksize=_ROWS_PER_BATCH))
    raise DataError(
        f"{path}: unknown file type {suffix!r}; use .parquet, .csv, .arrow or .npz, "
        "or a folder of files"
    )


def _folder_batches(folder: Path) -> Iterator[pa.RecordBatch]:
    """One row per file: its path relative to the folder and its bytes (sorted by path)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise DataError(f"folder {folder} has no files; nothing to make a data set of")
    schema = pa.schema([("path", pa.string()), ("content", pa.binary())])
    for chunk in _chunks(files, 64):
        yield pa.record_batch(
            [
                pa.array([str(p.relative_to(folder)) for p in chunk], pa.string()),
                pa.array([p.read_bytes() for p in chunk], pa.binary()),
            ],
            schema=schema,
        )


def _sample_batches(samples: Iterator[Mapping[str, Any]]) -> Iterator[pa.RecordBatch]:
    schema: pa.Schema | None = None
    for chunk in _chunks(samples, _ROWS_PER_BATCH):
        if not all(isinstance(s, Mapping) for s in chunk):
            raise DataError("every sample of an iterable must be a dict of column -> value")
        columns = {name: [s[name] for s in chunk] for name in chunk[0]}
        table = _columns_table(columns)
        if schema is None:
            schema = table.schema
        elif not table.schema.equals(schema):
            raise DataError(
                f"samples change schema mid-stream: {schema} then {table.schema}; "
                "give every sample the same columns and types"
            )
        yield from table.to_batches()


def _columns_table(columns: dict[str, list[Any]]) -> pa.Table:
    arrays: dict[str, Any] = {}
    for name, values in columns.items():
        first = values[0]
        arrays[name] = np.stack(values) if isinstance(first, np.ndarray) else values
    tensors = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    table = arrays_to_table(tensors) if tensors else None
    plain = {k: pa.array(v) for k, v in arrays.items() if k not in tensors}
    if table is None:
        return pa.table(plain)
    for name, array in plain.items():
        table = table.append_column(name, array)
    return table.select(list(columns))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def split_into_shards(batches: Iterable[pa.RecordBatch], shard_bytes: int) -> Iterator[pa.Table]:
    """Tables of about ``shard_bytes`` (in Arrow memory) each, in row order."""
    pending: list[pa.RecordBatch] = []
    pending_bytes = 0
    for batch in batches:
        while batch.num_rows:
            bytes_per_row = max(1, batch.nbytes // max(1, batch.num_rows))
            room_rows = max(1, (shard_bytes - pending_bytes) // bytes_per_row)
            head, batch = batch.slice(0, room_rows), batch.slice(room_rows)
            pending.append(head)
            pending_bytes += head.nbytes
            if pending_bytes >= shard_bytes:
                yield pa.Table.from_batches(pending)
                pending, pending_bytes = [], 0
    if pending:
        yield pa.Table.from_batches(pending)
