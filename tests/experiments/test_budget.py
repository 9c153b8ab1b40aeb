"""``keypatch experiment budget``: the pool's greedy against the even spread, at several budgets."""

from __future__ import annotations

import csv
import json

import pytest

from keypatch.cli.main import main


def test_budget_experiment_writes_its_table_rows_and_plot(photo_dir, tmp_path, capsys):
    out = tmp_path / "budget"
    assert main(["experiment", "budget", str(photo_dir), "--per-image", "2", "4", "--model", "random:toy:0",
                 "--out", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    with open(out / "budget.csv") as f:
        rows = list(csv.DictReader(f))
    images = len({r["image"] for r in rows})
    assert images == 3 and len(rows) == 6 and (out / "budget.png").stat().st_size > 1000
    for s in summary:
        sel = [r for r in rows if int(r["per_image"]) == s["per_image"]]
        assert sum(int(r["patches"]) for r in sel) == s["per_image"] * images == s["budget"]  # spent exactly
        mb = sum(float(r["loss_budget"]) for r in sel) / images
        me = sum(float(r["loss_even"]) for r in sel) / images
        assert s["mean_budget"] == pytest.approx(mb) and s["relative"] == pytest.approx(mb / me - 1)
        assert s["ci_relative"][0] <= s["relative"] <= s["ci_relative"][1]
    assert "| 2 (6) | 3 |" in (out / "budget.md").read_text()
    assert main(["experiment", "budget", str(photo_dir), "--strategy", "backward", "--model", "random:toy:0",
                 "--out", str(tmp_path / "no")]) == 2
    assert "cannot continue" in capsys.readouterr().err
