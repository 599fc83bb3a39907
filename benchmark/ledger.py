"""Results ledger: one CSV row per finished run, written atomically and safely under concurrency."""

from __future__ import annotations

import hashlib
import io
import json
import numbers
from pathlib import Path
from typing import Any, NoReturn

import pandas as pd
from filelock import FileLock

from benchmark.atomic import atomic_write_bytes
from benchmark.errors import UserError


def experiment_key(config: dict, seed: int) -> str:
    """First 12 hex chars of the sha1 of canonical JSON (sorted keys) of the resolved config and seed."""
    blob = json.dumps({"config": config, "seed": seed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]


def _encode(value: Any) -> str | None:
    """One cell as its CSV text; None (or a float NaN) is a missing value, dict/list/tuple become JSON."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)
        return None if value != value else repr(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, sort_keys=True)
    raise TypeError(f"ledger values must be str/int/float/bool/None/dict/list, got {type(value).__name__}")


class Ledger:
    """A CSV of run results keyed by the unique string column `key`; columns are the union over rows.

    Reads need no lock (files are only ever replaced atomically). Every write takes `<path>.lock`,
    re-reads the file, saves the previous version as `<path>.bak` and replaces the file atomically.
    Existing cells are rewritten verbatim; CSV types are re-inferred on read and an empty string
    reads back as missing (NaN).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.bak = self.path.with_name(self.path.name + ".bak")
        self._lock = FileLock(str(self.path) + ".lock")

    def frame(self) -> pd.DataFrame:
        """All rows with inferred dtypes; an empty frame when the file does not exist."""
        return self._read(typed=True)

    def has(self, key: str) -> bool:
        """Whether a row with this key exists."""
        return key in set(self.frame()["key"])

    def get(self, key: str) -> dict | None:
        """The row as a dict of Python values (columns missing for this row are left out), or None."""
        df = self.frame()
        records = df[df["key"] == key].to_dict("records")
        if not records:
            return None
        return {k: v for k, v in records[0].items() if not pd.isna(v)}

    def append(self, row: dict) -> None:
        """Add a row; a row with the same key is replaced (and moves to the end)."""
        key = row.get("key")
        if not isinstance(key, str) or not key:
            raise ValueError(f"ledger rows need a non-empty string 'key', got {key!r}")
        encoded = {k: _encode(v) for k, v in row.items()}
        with self._lock:
            raw = self._read(typed=False)
            records = [r for r in raw.to_dict("records") if r["key"] != key]
            columns = list(raw.columns) + [c for c in encoded if c not in raw.columns]
            self._write(pd.DataFrame([*records, encoded], columns=columns))

    def remove(self, key: str) -> bool:
        """Delete the row with this key (used by --force); returns whether there was one."""
        with self._lock:
            raw = self._read(typed=False)
            keep = raw["key"] != key
            if keep.all():
                return False
            self._write(raw[keep])
            return True

    def _read(self, typed: bool) -> pd.DataFrame:
        """Parse and validate the file; typed=False keeps every cell as its stored text (for rewriting)."""
        if not self.path.exists():
            return pd.DataFrame({"key": pd.Series(dtype=str)})
        dtype: type | dict = {"key": str} if typed else str
        try:
            df = pd.read_csv(
                self.path, dtype=dtype, keep_default_na=False, na_values=[""], encoding="utf-8"
            )
        except ValueError as e:  # ParserError, EmptyDataError and UnicodeDecodeError are ValueErrors
            self._corrupt(f"unparseable CSV: {str(e).strip().splitlines()[0]}")
        if "key" not in df.columns:
            self._corrupt("no 'key' column")
        if df["key"].isna().any():
            self._corrupt("a row without a key")
        dups = sorted(set(df.loc[df["key"].duplicated(), "key"]))
        if dups:
            self._corrupt(f"duplicated keys {', '.join(dups[:5])}")
        return df

    def _corrupt(self, why: str) -> NoReturn:
        raise UserError(
            f"results ledger {self.path} is corrupt ({why}); it was left untouched. "
            f"Move it aside or restore it from {self.bak}."
        )

    def _write(self, raw: pd.DataFrame) -> None:
        """Save the current (valid) file as .bak, then replace the file with `raw` (all cells text)."""
        if self.path.exists():
            atomic_write_bytes(self.bak, self.path.read_bytes())
        buf = io.StringIO()
        raw.to_csv(buf, index=False)
        atomic_write_bytes(self.path, buf.getvalue().encode("utf-8"))
