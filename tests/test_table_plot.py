"""The bar chart beside a method table (`tables.plot`): files written, bars only for measured runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tables.plot import method_table_figure, plot_method_table

SPEC = {
    "table": 9,
    "title": "Table 9: a synthetic method table",
    "methods": ["baseline", "kd", {"id": "maskd_t4", "label": "MasKD, T=4"}],
    "teacher": {"id": "teacher", "label": "Big", "paper": "teacher", "method": "baseline"},
    "students": [
        {"id": "a", "label": "Small-A", "paper": "Small-A"},
        {"id": "b", "label": "Small-B (scratch)", "paper": "Small-B†"},
    ],
}
PAPER = {
    "source": "synthetic",
    "teacher": {"model": "Big", "params_M": 60.0, "flops_G": 2000.0, "val": 78.0, "test": 77.0},
    "students": {
        "Small-A": {"params_M": 10.0, "flops_G": 500.0,
                    "methods": {"baseline": (74.0, None), "kd": (75.0, None), "maskd_t4": (None, None)}},
        "Small-B†": {"params_M": 10.0, "flops_G": 500.0, "methods": {"baseline": (65.0, 64.0), "kd": (66.0, None)}},
    },
}


def _runs() -> pd.DataFrame:
    """2 rows × 3 methods × 2 seeds, minus (b, maskd_t4), plus a teacher run and an unplotted method."""
    rows = [{"row": "teacher", "method": "baseline", "seed": 0, "miou": 77.5}]
    for r, base in (("a", 72.0), ("b", 66.0)):
        for k, m in enumerate(("baseline", "kd", "maskd_t4")):
            if (r, m) != ("b", "maskd_t4"):
                rows += [{"row": r, "method": m, "seed": s, "miou": base + k + 0.5 * s} for s in (0, 1)]
    rows.append({"row": "a", "method": "dkd", "seed": 0, "miou": 90.0})  # not a column of the spec
    return pd.DataFrame(rows)


def _bars(fig) -> list[tuple[float, float]]:
    return sorted((round(p.get_x() + p.get_width() / 2, 6), round(p.get_height(), 6)) for p in fig.axes[0].patches)


def _paper_markers(fig) -> list[tuple[float, float]]:
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_marker() == "o"]
    return sorted(zip(line.get_xdata().round(6), line.get_ydata(), strict=True))


def test_plot_writes_png_and_pdf(tmp_path: Path) -> None:
    paths = plot_method_table(_runs(), SPEC, PAPER, tmp_path / "plots" / "table9.png")
    assert paths == [tmp_path / "plots" / "table9.png", tmp_path / "plots" / "table9.pdf"]
    with Image.open(paths[0]) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
    assert paths[1].read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["table9.pdf", "table9.png"]  # no temp files


def test_plot_bars_are_measured_means_and_markers_paper_vals() -> None:
    fig = method_table_figure(_runs(), SPEC, PAPER)
    ax = fig.axes[0]
    # Five measured (row, method) cells → five bars at the mean of two seeds; none for (b, maskd_t4) or dkd.
    slot = 0.8 / 3
    centres = [-0.4 + slot * (j + 0.5) for j in range(3)]
    assert _bars(fig) == sorted([(round(i + c, 6), base + k + 0.25) for i, base in ((0, 72.0), (1, 66.0))
                                 for k, c in enumerate(centres) if (i, k) != (1, 2)])
    # Paper markers only where the paper has a value, over the bar slot of that method.
    assert _paper_markers(fig) == [(round(c, 6), v) for c, v in
                                   ((centres[0], 74.0), (centres[1], 75.0), (1 + centres[0], 65.0),
                                    (1 + centres[1], 66.0))]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Small-A", "Small-B (scratch)\n(paper: Small-B†)"]
    assert ax.get_ylabel() == "val mIoU (%)" and ax.get_title() == SPEC["title"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:4] == ["Baseline", "KD", "MasKD, T=4", "paper (val)"]
    assert "teacher Big, ours: 77.50 (n=1)" in labels and "teacher Big, paper val: 78.00" in labels
    assert 77.5 in [ln.get_ydata()[0] for ln in ax.lines if ln.get_linestyle() == "--"]


@pytest.mark.parametrize("runs", [pd.DataFrame(), pd.DataFrame(columns=["row", "method", "seed", "miou"])])
def test_plot_empty_frame_shows_paper_only(tmp_path: Path, runs: pd.DataFrame) -> None:
    paths = plot_method_table(runs, SPEC, PAPER, tmp_path / "table9")
    assert paths == [tmp_path / "table9.png", tmp_path / "table9.pdf"]
    with Image.open(paths[0]) as im:
        im.verify()
    assert paths[1].read_bytes().startswith(b"%PDF")
    fig = method_table_figure(runs, SPEC, PAPER)
    assert _bars(fig) == [] and len(_paper_markers(fig)) == 4
    assert fig.axes[0].get_title() == "no measured runs yet" and fig.get_suptitle() == SPEC["title"]
    assert not [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "--"]  # no measured teacher line
