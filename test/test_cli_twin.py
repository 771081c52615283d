"""The twin commands as a user runs them (in-process through typer's runner)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from weak_template_ros.cli import app

runner = CliRunner()


def test_generate_parts_scenes_and_show(tmp_path):
    res = runner.invoke(app, ["generate", "parts", "--out", str(tmp_path), "-f", "hex_nut", "-f", "flange"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "models" / "models_info.json").read_text())
    assert sorted(info) == ["1", "2"] and info["1"]["diameter"] > 40  # mm, as BOP stores it

    ds = tmp_path / "ds"
    res = runner.invoke(app, ["generate", "scenes", "--out", str(ds), "--scenes", "1", "--frames", "2",
                              "--parts", "2", "--distractors", "1", "-f", "hex_nut", "-f", "t_profile"])
    assert res.exit_code == 0, res.output
    assert len(list((ds / "test" / "000000" / "rgb").glob("*.png"))) == 2

    res = runner.invoke(app, ["show", str(ds), "--frames", "2"])
    assert res.exit_code == 0, res.output
    assert (ds / "overview.png").stat().st_size > 10_000


def test_out_of_range_option_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["generate", "scenes", "--out", str(tmp_path), "--occlusion-max", "2"])
    assert res.exit_code == 2
    assert "occlusion_max: expected a value in [0.0, 0.95]" in res.output
    res = runner.invoke(app, ["show", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "expected a BOP dataset folder" in res.output
