"""`weak-template generate marks` and `weak-template align` as a user runs them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from weak_template_ros.cli import app

runner = CliRunner()


def test_generate_marks_then_align_json(tmp_path):
    out = tmp_path / "marks"
    res = runner.invoke(app, ["generate", "marks", "--out", str(out), "--n", "2", "--mark", "box_in_box",
                              "--size", "64", "--line-width", "6", "--width", "128", "--height", "128",
                              "--snr", "20", "--seed", "3"])
    assert res.exit_code == 0, res.output
    truth = json.loads((out / "ground_truth.json").read_text())
    cal = tmp_path / "cal.yaml"
    cal.write_text("pixel_size: 2.0e-6\nrotation: 0.0\nscale: 1.0\nflip_y: false\n")
    for rec in truth["images"]:
        res = runner.invoke(app, ["align", "--template", str(out / "template.png"), "--image",
                                  str(out / rec["image"]), "--calibration", str(cal), "--json"])
        assert res.exit_code == 0, res.output
        r = json.loads(res.stdout[res.stdout.index("{"):])
        assert r["found"] is True
        assert abs(r["dx"] - rec["dx"]) < 0.05 and abs(r["dy"] - rec["dy"]) < 0.05
        assert abs(r["dtheta"] - rec["dtheta"]) < 1e-3
        assert abs(r["dx_m"] - 2e-6 * r["dx"]) < 1e-12
        assert len(r["covariance"]) == 4 and r["covariance"][0][0] > 0
    # The learned pipeline from the same command (--method): the same answer within the noise.
    rec = truth["images"][0]
    res = runner.invoke(app, ["align", "--template", str(out / "template.png"), "--image",
                              str(out / rec["image"]), "--method", "learned", "--motion", "euclidean",
                              "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout[res.stdout.index("{"):])
    assert r["found"] is True and abs(r["dx"] - rec["dx"]) < 0.1 and abs(r["dy"] - rec["dy"]) < 0.1
    res = runner.invoke(app, ["align", "--template", str(out / "template.png"), "--image",
                              str(out / rec["image"]), "--method", "deep"])
    assert res.exit_code == 2 and "method: expected one of" in res.output, res.output
    # Human-readable output too.
    res = runner.invoke(app, ["align", "--template", str(out / "template.png"), "--image",
                              str(out / "000000.png")])
    assert res.exit_code == 0 and "dx =" in res.output


def test_align_errors_are_clear(tmp_path):
    res = runner.invoke(app, ["align", "--template", str(tmp_path / "nope.png"), "--image",
                              str(tmp_path / "nope.png")])
    assert res.exit_code == 2 and "expected an existing image file" in res.output
    res = runner.invoke(app, ["generate", "marks", "--out", str(tmp_path), "--mark", "star"])
    assert res.exit_code == 2 and "kind: expected one of" in res.output
