"""`python -m benchmark.figures`: Fig. 6 and Fig. 4 drawn from a fake cache (tiny data, random weights)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from benchmark.data.synthetic import SyntheticSpec, ensure_synthetic_cityscapes
from benchmark.engine.cache import CacheEntry
from benchmark.figures import masks, token_variants
from benchmark.figures.__main__ import main
from benchmark.figures.caches import list_token_stages, pick_learned, pick_variants
from benchmark.figures.common import DPI
from benchmark.models import build_segmentor

SPEC = SyntheticSpec(height=32, width=64, n_train=4, n_val=4, seed=0)
TEACHER_KEY = "0123456789ab"
NUM_TOKENS = 4


def _teacher(cache: Path) -> None:
    torch.manual_seed(0)
    arch = {"output_stride": 8, "aspp_rates": [1, 2, 3]}
    model = build_segmentor("deeplabv3_r18", num_classes=19, output_stride=8, aspp_rates=(1, 2, 3))
    config = {"model": "deeplabv3_r18", "arch": arch,
              "data": {"id": SPEC.name, "height": SPEC.height, "width": SPEC.width, "crop": None}}
    CacheEntry(cache / "teachers" / f"deeplabv3_r18-{TEACHER_KEY}").store(
        model.state_dict(), {"config": config, "key": TEACHER_KEY, "miou": 12.5})


def _tokens(cache: Path, key: str, task_loss: bool, num_tokens: int = NUM_TOKENS, age_s: float = 0) -> None:
    tokens = torch.randn(num_tokens, 19, generator=torch.Generator().manual_seed(len(key) + task_loss))
    entry = CacheEntry(cache / "stages" / f"tokens-{key}")
    entry.store({"tokens": tokens}, {
        "stage": "tokens", "key": key, "teacher": TEACHER_KEY, "miou": 11.0 + task_loss,
        "schedule": {"steps": 4},
        "config": {"method": "maskd", "num_tokens": num_tokens, "task_loss": task_loss, "token_seed": 0}})
    if age_s:
        stamp = time.time() - age_s
        os.utime(entry.meta_path, (stamp, stamp))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    ensure_synthetic_cityscapes(SPEC, root, progress=False)
    _teacher(root)
    _tokens(root, "learned00001", task_loss=True)
    _tokens(root, "learnedT2old", task_loss=True, num_tokens=2, age_s=100)
    return root


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.load()
        return image.size


def _check(path_png: Path, inches: tuple[float, float]) -> None:
    pdf = path_png.with_suffix(".pdf")
    assert path_png.stat().st_size > 0 and pdf.stat().st_size > 0
    assert pdf.read_bytes().startswith(b"%PDF")
    width, height = _png_size(path_png)
    assert abs(width - inches[0] * DPI) <= 1 and abs(height - inches[1] * DPI) <= 1


def test_figures_from_cache(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Only learned tokens: Fig. 6 is drawn, Fig. 4 is skipped with the command that fills the cache.
    out = tmp_path / "figs"
    assert main(["--cache-dir", str(cache), "--out", str(out), "--images", "1"]) == 0
    err = capsys.readouterr().err
    assert "skipped fig4_token_variants" in err and "python benchmark/run.py --table tokens" in err
    assert not (out / "fig4_token_variants.png").exists()
    _check(out / "fig6_learned_masks.png", masks.figure_size(1, NUM_TOKENS, SPEC.height, SPEC.width))

    _tokens(cache, "diversity001", task_loss=False)
    assert main(["--cache-dir", str(cache), "--out", str(out), "--images", "2", "--variant-images", "1",
                 "--teacher-key", TEACHER_KEY[:6]]) == 0
    printed = capsys.readouterr()
    assert "skipped fig" not in printed.err  # the detection figures are skipped: no detection cache here
    _check(out / "fig6_learned_masks.png", masks.figure_size(2, NUM_TOKENS, SPEC.height, SPEC.width))
    _check(out / "fig4_token_variants.png", token_variants.figure_size(1, NUM_TOKENS, SPEC.height, SPEC.width))
    assert sorted(p.name for p in out.iterdir()) == ["fig4_token_variants.pdf", "fig4_token_variants.png",
                                                      "fig6_learned_masks.pdf", "fig6_learned_masks.png"]


def test_cache_selection(cache: Path) -> None:
    _tokens(cache, "diversity001", task_loss=False)
    teacher, stage = pick_learned(cache)
    assert teacher.key == TEACHER_KEY and stage.key == "learned00001"  # the paper's T=8 is absent: newest
    assert pick_learned(cache, num_tokens=2)[1].key == "learnedT2old"
    _, div, learned = pick_variants(cache)
    assert (div.key, learned.key) == ("diversity001", "learned00001")
    assert [s.key for s in list_token_stages(cache, task_loss=True)] == ["learned00001", "learnedT2old"]
    rows = token_variants.variants(div, learned)
    assert [r.stage for r in rows] == [None, div, learned]
    assert rows[0].tokens.shape == (NUM_TOKENS, 19) and rows[0].tokens.abs().max() < 0.1  # N(0, 0.01) start


def test_empty_cache_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert "error: no figure written" in err and "python benchmark/run.py --table 3" in err
    assert not (tmp_path / "figs").exists()


def test_unknown_teacher_key(cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cache-dir", str(cache), "--out", str(tmp_path), "--teacher-key", "ffff"]) == 2
    assert "matches no cached teacher" in capsys.readouterr().err
