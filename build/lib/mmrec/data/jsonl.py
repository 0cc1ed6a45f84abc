"""Streaming JSON-lines reader: Arrow tables block by block, bad lines reported by number.

A multi-GB ``.jsonl`` / ``.jsonl.gz`` file is read in blocks of whole lines (``block_bytes``,
64 MiB by default), so memory stays bounded whatever the file size. Each block goes through a
multi-threaded JSON parser with an explicit schema (fields not in the schema are ignored):
polars' NDJSON reader for flat schemas (strings and numbers: the review files; about 1.6x
pyarrow's speed on review lines, which carry long texts we skip), pyarrow's for nested ones
(the metadata). Only a block the fast parser rejects is re-read line by line with
:mod:`json`, to find the malformed lines, report them with their 1-based line numbers and
keep the rest. (One difference of the fast path: a JSON boolean where a string is expected
is kept as ``"true"``/``"false"``; a nested object or array there sends the block to the
careful path, which rejects the line.)
A line whose *required* fields are missing or null counts as malformed too, and so does any
line the careful path cannot turn into a row for any other reason (JSON nested too deeply for
:mod:`json`, an integer outside the column's range, a lone surrogate in a string, ...): in
non-strict mode one bad line never aborts the parse.

A truncated or corrupt gzip file raises a :class:`DatasetError` naming the file and the last
line read; nothing is written here, so callers that stream into a temporary file must remove
it when an exception passes through them.

``strict=True`` turns the first malformed line into a :class:`DatasetError` naming the file
and line.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from mmrec.data.prepared import DatasetError

MAX_EXAMPLES = 20


def _decompress_errors() -> tuple[type[BaseException], ...]:
    """What a truncated or corrupt gzip stream raises: EOFError (truncated), BadGzipFile (an
    OSError: CRC or header) and the inflater's own error (zlib's, or ISA-L's)."""
    errors: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)
    try:
        from isal.isal_zlib import error as isal_error
    except ImportError:  # pragma: no cover - isal is a declared dependency
        return errors
    return errors + (isal_error,)


_DECOMPRESS_ERRORS = _decompress_errors()


@dataclass
class ParseReport:
    """Counts of one file's parse: lines read, rows kept, malformed lines (with examples)."""

    path: str
    lines: int = 0
    rows: int = 0
    blank: int = 0
    malformed: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)

    def bad(self, line: int, reason: str, strict: bool) -> None:
        self.malformed += 1
        if strict:
            raise DatasetError(f"{self.path}:{line}: {reason}. Fix or remove the line, or run without "
                               f"strict mode to skip malformed lines (they are counted and reported).")
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append((line, reason))

    def as_dict(self) -> dict:
        return {"path": self.path, "lines": self.lines, "rows": self.rows, "blank": self.blank,
                "malformed": self.malformed,
                "malformed_examples": [f"line {n}: {r}" for n, r in self.examples]}


def open_maybe_gzip(path: str | Path) -> IO[bytes]:
    """Binary reader of a plain or gzip file (by content). gzip is decompressed by ISA-L in a
    background thread when ``isal`` is installed (several times zlib's speed, and it overlaps
    with parsing); otherwise by :mod:`gzip`."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic != b"\x1f\x8b":
        return open(path, "rb")
    try:
        from isal import igzip_threaded
    except ImportError:  # pragma: no cover - isal is a declared dependency
        return gzip.open(path, "rb")
    return igzip_threaded.open(path, "rb", threads=1)


def _coerce(value, typ: pa.DataType):
    """Python value -> value of Arrow type ``typ``; raises ValueError when it does not fit."""
    if value is None:
        return None
    if pa.types.is_string(typ):
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:  # "\ud800" is valid JSON but has no UTF-8 form
                raise ValueError("string with a lone UTF-16 surrogate (no UTF-8 form)") from None
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if pa.types.is_integer(typ):
        if isinstance(value, bool):
            raise ValueError("expected an integer, got a boolean")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        bounds = np.iinfo(typ.to_pandas_dtype())
        if not bounds.min <= value <= bounds.max:  # Python ints are unbounded, Arrow's are not
            raise ValueError(f"integer {value} is outside the range of {typ}")
        return value
    if pa.types.is_floating(typ):
        if isinstance(value, bool):
            raise ValueError("expected a number, got a boolean")
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
            raise ValueError(f"expected a number, got {str(value)[:40]!r}") from None
    if pa.types.is_boolean(typ):
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true/false, got {value!r}")
    if pa.types.is_list(typ):
        if not isinstance(value, list):
            value = [value]  # a lone string where a list is expected: a list of one
        return [_coerce(v, typ.value_type) for v in value]
    if pa.types.is_struct(typ):
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {type(value).__name__}")
        return {f.name: _coerce(value.get(f.name), f.type) for f in typ}
    raise TypeError(f"unsupported schema type {typ}")


def _polars_schema(schema: pa.Schema) -> dict | None:
    """The polars schema of a flat Arrow schema (strings, integers, floats, booleans), or
    ``None`` when a field is nested or polars is not installed (pyarrow's parser then)."""
    try:
        import polars as pl
    except ImportError:  # pragma: no cover - polars is a declared dependency
        return None
    out = {}
    for f in schema:
        if pa.types.is_string(f.type):
            out[f.name] = pl.String
        elif pa.types.is_int64(f.type):
            out[f.name] = pl.Int64
        elif pa.types.is_float64(f.type):
            out[f.name] = pl.Float64
        elif pa.types.is_boolean(f.type):
            out[f.name] = pl.Boolean
        else:
            return None
    return out


class JsonlReader:
    """Iterate Arrow tables (``schema`` columns) over a JSON-lines file; see the module docstring.

    Args:
        path: ``.jsonl`` or gzip-compressed file (detected by content, not by name).
        schema: the columns to extract; other fields are ignored.
        required: columns that must be present and non-null on every kept line.
        strict: fail on the first malformed line instead of skipping it.
        block_bytes: bytes of whole lines parsed at once.
    """

    def __init__(self, path: str | Path, schema: pa.Schema, required: tuple[str, ...] = (),
                 strict: bool = False, block_bytes: int = 64 << 20):
        self.path = Path(path)
        self.schema = schema
        self.required = tuple(required)
        self.strict = strict
        self.block_bytes = block_bytes
        self.report = ParseReport(str(self.path))
        self._options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        self._polars_schema = _polars_schema(schema)

    def __iter__(self) -> Iterator[pa.Table]:
        with open_maybe_gzip(self.path) as fh:
            first_line = 1
            while True:
                block = self._read_block(fh)
                if not block:
                    break
                n_lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
                table = self._parse_block(block, first_line, n_lines)
                self.report.lines += n_lines
                first_line += n_lines
                if table.num_rows:
                    self.report.rows += table.num_rows
                    yield table

    def _read_block(self, fh: IO[bytes]) -> bytes:
        """The next ``block_bytes`` of whole lines; a broken gzip stream becomes a DatasetError."""
        try:
            block = fh.read(self.block_bytes)
            if block and not block.endswith(b"\n"):
                block += fh.readline()  # complete the last line
            return block
        except _DECOMPRESS_ERRORS as err:
            raise DatasetError(
                f"{self.path}: the compressed data is truncated or corrupt ({type(err).__name__}: "
                f"{err}; noticed after {self.report.lines} lines); the file is incomplete, "
                f"e.g. an interrupted download or copy. Delete it and fetch it again (a downloaded "
                f"raw file: rerun `python -m mmrec.prepare` with the same arguments plus "
                f"prepare.force=[download]; a file you supplied: replace it with a complete copy)."
            ) from err

    # -- one block ------------------------------------------------------------------------
    def _fast_parse(self, block: bytes) -> pa.Table:
        """One block through the fast parser; raises ``pa.ArrowInvalid`` where it cannot be
        trusted (then the caller re-reads the block line by line)."""
        if self._polars_schema is None:
            return pj.read_json(io.BytesIO(block), parse_options=self._options)
        import polars as pl

        try:
            frame = pl.read_ndjson(io.BytesIO(block), schema=self._polars_schema)
        except pl.exceptions.PolarsError as err:  # bad JSON, non-object line, wrong type
            raise pa.ArrowInvalid(str(err)) from err
        table = frame.to_arrow().cast(self.schema)  # large_string -> string, as pyarrow gives
        for f in self.schema:
            # polars renders a nested value where a string is expected as its JSON text
            if pa.types.is_string(f.type) and table.num_rows and pc.any(
                    pc.match_substring_regex(table[f.name], r"^[\[{]")).as_py():
                raise pa.ArrowInvalid(f"nested value in string field {f.name}")
        return table

    def _parse_block(self, block: bytes, first_line: int, n_lines: int) -> pa.Table:
        try:
            table = self._fast_parse(block)
        except Exception:  # noqa: BLE001 - whatever the fast parser refuses, the careful path judges per line
            return self._parse_lines(block, first_line)
        if table.num_rows == n_lines:
            line_of_row = np.arange(n_lines)
        else:  # blank lines (skipped by the parser): map rows to the non-blank ones
            lines = block.split(b"\n")[:n_lines]
            line_of_row = np.flatnonzero([bool(line.strip()) for line in lines])
            if table.num_rows != len(line_of_row):  # cannot map rows to lines: the careful path
                return self._parse_lines(block, first_line)
            self.report.blank += len(lines) - len(line_of_row)
        if not self.required:
            return table
        ok = np.ones(table.num_rows, dtype=bool)
        for name in self.required:
            ok &= pc.is_valid(table[name]).to_numpy(zero_copy_only=False)
        if ok.all():
            return table
        for r in np.flatnonzero(~ok):
            missing = [n for n in self.required if not table[n][int(r)].is_valid]
            self.report.bad(first_line + int(line_of_row[r]), f"missing required field(s) {missing}", self.strict)
        return table.filter(pa.array(ok))

    def _parse_lines(self, block: bytes, first_line: int) -> pa.Table:
        rows: list[dict] = []
        row_lines: list[int] = []
        lines = block.split(b"\n")
        if block.endswith(b"\n"):
            lines.pop()
        for offset, raw in enumerate(lines):
            if not raw.strip():
                self.report.blank += 1
                continue
            line = first_line + offset
            values, reason = self._line_values(raw)
            if reason:  # outside the try of _line_values: strict mode's DatasetError must escape
                self.report.bad(line, reason, self.strict)
                continue
            rows.append(values)
            row_lines.append(line)
        try:
            return self._to_table(rows)
        except Exception:  # noqa: BLE001 - a value Arrow refuses that the checks let through
            return self._to_table_row_by_row(rows, row_lines)

    def _line_values(self, raw: bytes) -> tuple[dict, str]:
        """``(column values, "")`` of one non-blank line, or ``({}, why it is malformed)``."""
        try:
            record = json.loads(raw)
        except RecursionError:
            return {}, "invalid JSON (nested too deeply)"
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            return {}, f"invalid JSON ({getattr(err, 'msg', err)})"
        except Exception as err:  # noqa: BLE001 - one odd line must not abort the file
            return {}, f"unreadable line ({type(err).__name__}: {err})"
        if not isinstance(record, dict):
            return {}, f"expected a JSON object, got {type(record).__name__}"
        try:
            values = {f.name: _coerce(record.get(f.name), f.type) for f in self.schema}
        except RecursionError:
            return {}, "value nested too deeply"
        except ValueError as err:
            return {}, str(err)
        except Exception as err:  # noqa: BLE001
            return {}, f"unusable value ({type(err).__name__}: {err})"
        missing = [n for n in self.required if values[n] is None]
        if missing:
            return {}, f"missing required field(s) {missing}"
        return values, ""

    def _to_table(self, rows: list[dict]) -> pa.Table:
        return pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in self.schema},
                        schema=self.schema)

    def _to_table_row_by_row(self, rows: list[dict], row_lines: list[int]) -> pa.Table:
        """The rows Arrow accepts one at a time (slow, only for a block with such a row); the
        others are malformed lines (e.g. a string with a lone UTF-16 surrogate)."""
        kept = []
        for row, line in zip(rows, row_lines):
            try:
                self._to_table([row])
            except Exception as err:  # noqa: BLE001
                self.report.bad(line, f"value not representable ({type(err).__name__}: {err})", self.strict)
                continue
            kept.append(row)
        return self._to_table(kept)
