"""Ledger: append/get/replace/remove, column union, JSON cells, concurrency, corruption, keys."""

from __future__ import annotations

import math
import multiprocessing as mp
from pathlib import Path

import pytest

from benchmark.errors import UserError
from benchmark.ledger import Ledger, experiment_key


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "out" / "ledger.csv")


def test_missing_file_is_empty(ledger: Ledger) -> None:
    assert len(ledger.frame()) == 0
    assert not ledger.has("abc")
    assert ledger.get("abc") is None
    assert not ledger.remove("abc")
    assert not ledger.path.exists()


def test_append_get_has(ledger: Ledger) -> None:
    ledger.append({"key": "0123", "method": "maskd", "seed": 1, "miou": 74.21, "ok": True, "note": "None"})
    assert ledger.has("0123") and not ledger.has("123")
    assert ledger.get("0123") == {"key": "0123", "method": "maskd", "seed": 1, "miou": 74.21, "ok": True,
                                  "note": "None"}
    assert ledger.path.read_text().splitlines()[0] == "key,method,seed,miou,ok,note"


def test_floats_round_trip_exactly(ledger: Ledger) -> None:
    values = [0.1 + 0.2, 1 / 3, 74.21000000000001, 1e-300, math.inf]
    for i, v in enumerate(values):
        ledger.append({"key": f"k{i}", "x": v})
    assert [ledger.get(f"k{i}")["x"] for i in range(len(values))] == values


def test_union_of_columns(ledger: Ledger) -> None:
    ledger.append({"key": "a", "miou": 70.0})
    ledger.append({"key": "b", "map": 41.5, "extra": "x"})
    df = ledger.frame()
    assert list(df.columns) == ["key", "miou", "map", "extra"]
    assert df["miou"].tolist()[0] == 70.0 and math.isnan(df["miou"].tolist()[1])
    assert ledger.get("a") == {"key": "a", "miou": 70.0}
    assert ledger.get("b") == {"key": "b", "map": 41.5, "extra": "x"}


def test_json_columns_and_missing_values(ledger: Ledger) -> None:
    ledger.append({"key": "a", "cfg": {"b": [1, 2], "a": "x"}, "seeds": [0, 1], "gone": None,
                   "nan": float("nan")})
    assert ledger.get("a") == {"key": "a", "cfg": '{"a": "x", "b": [1, 2]}', "seeds": "[0, 1]"}
    with pytest.raises(TypeError):
        ledger.append({"key": "b", "bad": object()})
    with pytest.raises(ValueError):
        ledger.append({"miou": 1.0})


def test_replace_and_remove(ledger: Ledger) -> None:
    ledger.append({"key": "a", "miou": 70.0})
    ledger.append({"key": "b", "miou": 71.0})
    ledger.append({"key": "a", "miou": 72.0, "forced": True})
    df = ledger.frame()
    assert df["key"].tolist() == ["b", "a"]
    assert ledger.get("a") == {"key": "a", "miou": 72.0, "forced": True}
    assert ledger.remove("a") and not ledger.has("a")
    assert not ledger.remove("a")
    assert ledger.frame()["key"].tolist() == ["b"]
    assert ledger.remove("b") and len(ledger.frame()) == 0
    ledger.append({"key": "c", "miou": 1.5})
    assert ledger.get("c") == {"key": "c", "miou": 1.5}


def test_bak_is_previous_version(ledger: Ledger) -> None:
    ledger.append({"key": "a", "miou": 70.0})
    assert not ledger.bak.exists()
    first = ledger.path.read_bytes()
    ledger.append({"key": "b", "miou": 71.0})
    assert ledger.bak.read_bytes() == first
    second = ledger.path.read_bytes()
    ledger.remove("a")
    assert ledger.bak.read_bytes() == second
    assert not [p for p in ledger.path.parent.iterdir() if p.suffix == ".tmp"]


def _append_many(path: str, worker: int, count: int) -> None:
    led = Ledger(Path(path))
    for i in range(count):
        led.append({"key": f"w{worker}-{i}", "worker": worker, "i": i, f"col{worker}": i * 0.5})


def test_concurrent_appends_lose_no_row(ledger: Ledger) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(ledger.path), w, 20)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    df = ledger.frame()
    assert sorted(df["key"]) == sorted(f"w{w}-{i}" for w in range(2) for i in range(20))
    assert {"col0", "col1"} <= set(df.columns)


@pytest.mark.parametrize(
    "text",
    [
        "key,a\nk1,1\nk2,2,3,4\n",  # too many fields
        "a,b\n1,2\n",  # no key column
        "key,a\nk1,1\nk1,2\n",  # duplicated key
        "key,a\n,1\n",  # row without key
        "",  # empty file
    ],
)
def test_corrupt_ledger_is_user_error_and_untouched(ledger: Ledger, text: str) -> None:
    ledger.path.parent.mkdir(parents=True)
    ledger.path.write_text(text)
    before = ledger.path.read_bytes()
    for action in (ledger.frame, lambda: ledger.append({"key": "new", "x": 1}), lambda: ledger.remove("k1")):
        with pytest.raises(UserError) as err:
            action()
        assert str(ledger.path) in str(err.value)
        assert "move it aside or restore it from" in str(err.value).lower()
        assert str(ledger.bak) in str(err.value)
        assert ledger.path.read_bytes() == before
    assert not ledger.bak.exists()


def test_experiment_key_stable_and_sensitive() -> None:
    cfg = {"model": "deeplabv3_r18", "lr": 0.01, "kd": {"method": "maskd", "tau": 1.0}}
    key = experiment_key(cfg, 0)
    assert len(key) == 12 and all(c in "0123456789abcdef" for c in key)
    reordered = {"kd": {"tau": 1.0, "method": "maskd"}, "lr": 0.01, "model": "deeplabv3_r18"}
    assert experiment_key(reordered, 0) == key
    assert experiment_key(cfg, 1) != key
    assert experiment_key({**cfg, "lr": 0.02}, 0) != key
    assert experiment_key({**cfg, "kd": {"method": "maskd", "tau": 2.0}}, 0) != key
    # Pinned so that a change of the canonical form (which would orphan every ledger row) is noticed.
    assert key == "b464a3698d44"
