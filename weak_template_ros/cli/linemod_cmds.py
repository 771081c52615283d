"""CLI commands for LINEMOD: `templates build`, `detect`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.table import Table

from weak_template_ros.cli.apps import app, templates_app
from weak_template_ros.cli.common import console, print_json, progress, user_errors
from weak_template_ros.config import from_mapping, to_dict
from weak_template_ros.image_io import read_image

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "linemod.yaml"


def _yaml_section(path: Path | None, section: str) -> dict:
    import yaml

    from weak_template_ros.errors import InputError

    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(str(path), "a readable YAML file", f"{type(exc).__name__}: {exc}") from exc
    return dict(data.get(section) or {})


def read_camera_json(path: Path):
    """(CameraIntrinsics, depth_scale mm/unit) from a BOP ``camera.json`` (fx fy cx cy width
    height [depth_scale]) or a JSON with ``cam_K`` (3x3 row-major) plus width/height."""
    from weak_template_ros.camera import CameraIntrinsics
    from weak_template_ros.errors import InputError

    try:
        d = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise InputError(str(path), "an existing camera JSON file", "no such file") from exc
    except (OSError, ValueError) as exc:
        raise InputError(str(path), "a camera JSON file", f"{type(exc).__name__}: {exc}") from exc
    try:
        if "cam_K" in d:
            cam = CameraIntrinsics.from_K(d["cam_K"], d["width"], d["height"])
        else:
            cam = CameraIntrinsics(float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]),
                                   d["width"], d["height"])
    except (KeyError, TypeError) as exc:
        raise InputError(str(path), "fx, fy, cx, cy, width, height (BOP camera.json)",
                         f"missing or bad key {exc}") from exc
    return cam, float(d.get("depth_scale", 1.0))


def _subdivisions_for(views: int, hemisphere: bool) -> int:
    """Smallest icosphere subdivision with at least ``views`` viewpoints."""
    from weak_template_ros.linemod.templates import sample_viewpoints

    for s in range(6):
        if len(sample_viewpoints(s, hemisphere)) >= views or s == 5:
            return s
    return 5


@templates_app.command("build")
def build(
    model: Path = typer.Option(..., help="part mesh (PLY/OBJ/STL)"),
    out: Path = typer.Option(..., help="template library to write (.wtl)"),
    units: str = typer.Option("auto", help="units of the mesh file: auto, m or mm"),
    camera: Path | None = typer.Option(None, help="camera JSON (BOP camera.json); default: "
                                       "--width x --height with --fov"),
    width: int = typer.Option(640, help="image width without --camera [px]"),
    height: int = typer.Option(480, help="image height without --camera [px]"),
    fov: float = typer.Option(60.0, help="horizontal field of view without --camera [deg]"),
    views: int | None = typer.Option(None, help="at least this many viewpoints (chooses the "
                                     "icosphere subdivision); default from the config"),
    inplane: int | None = typer.Option(None, help="in-plane rotations per view"),
    distance: list[float] = typer.Option([], "--distance", "-d",
                                         help="camera distance [m] (repeat the option)"),
    hemisphere: bool | None = typer.Option(None, "--hemisphere/--sphere",
                                           help="upper hemisphere or full sphere of views"),
    config: Path | None = typer.Option(None, help=f"YAML with a 'templates' section "
                                       f"(default values: {DEFAULT_CONFIG.name})"),
):
    """Render a part from many viewpoints and save its LINEMOD template library."""
    from weak_template_ros.camera import CameraIntrinsics
    from weak_template_ros.linemod.templates import TemplateConfig, build_templates
    from weak_template_ros.models import load_mesh

    with user_errors():
        part = load_mesh(model, units=units)
        cam = read_camera_json(camera)[0] if camera else CameraIntrinsics.from_fov(width, height, fov)
        values = to_dict(TemplateConfig())
        values.update(_yaml_section(config, "templates"))
        if hemisphere is not None:
            values["viewpoints"] = "hemisphere" if hemisphere else "sphere"
        if views is not None:
            values["subdivisions"] = _subdivisions_for(views, values["viewpoints"] == "hemisphere")
        if inplane is not None:
            values["inplane_steps"] = inplane
        if distance:
            values["distances"] = list(distance)
        cfg = from_mapping(TemplateConfig, values, source="template options")
        with progress() as bar:
            task = bar.add_task("templates", total=None)
            lib = build_templates(part, cam, cfg,
                                  progress=lambda i, n: bar.update(task, completed=i, total=n))
        lib.save(out)
    g = [int((x[..., 0] >= 0).sum(1).mean()) for x in lib.grad]
    d = [int((x[..., 0] >= 0).sum(1).mean()) for x in lib.depth]
    console.print(f"{out}: {len(lib)} templates of {part.name} ({int(lib.meta[:, 0].max()) + 1} "
                  f"views x {len(cfg.distances)} distances x {cfg.inplane_steps} in-plane), mean "
                  f"features per level: gradient {g}, normals {d}")


@app.command("detect")
def detect(
    templates: Path = typer.Option(..., help="template library (.wtl)"),
    rgb: Path = typer.Option(..., help="colour image (PNG/JPEG)"),
    depth: Path | None = typer.Option(None, help="depth image: 16-bit PNG in depth_scale mm "
                                      "units (BOP) or .npy float metres"),
    camera: Path | None = typer.Option(None, help="camera JSON (BOP camera.json); default: the "
                                       "library's camera"),
    model: Path | None = typer.Option(None, help="check the library was built from this mesh"),
    max_detections: int | None = typer.Option(None, help="hypotheses to report"),
    threshold: float | None = typer.Option(None, help="minimum score in [0, 1]"),
    device: str | None = typer.Option(None, help="torch device: auto, cpu, cuda"),
    config: Path | None = typer.Option(None, help="YAML with a 'matcher' section"),
    as_json: bool = typer.Option(False, "--json", help="print JSON (metres, radians)"),
):
    """Detect a part with its template library: ranked hypotheses with coarse 6D poses."""
    import numpy as np

    from weak_template_ros.linemod.matcher import Matcher, MatcherConfig
    from weak_template_ros.linemod.templates import TemplateLibrary
    from weak_template_ros.models import load_mesh

    with user_errors():
        cam, depth_scale = read_camera_json(camera) if camera else (None, 1.0)
        checksum = load_mesh(model).checksum if model else None
        lib = TemplateLibrary.load(templates, model_checksum=checksum, camera=cam)
        image = read_image(rgb, "colour")
        dmap = None
        if depth is not None:
            if depth.suffix.lower() == ".npy":
                dmap = np.load(depth, allow_pickle=False)
            else:
                raw = read_image(depth, "depth", rgb=False)
                dmap = raw.astype(np.float32) * np.float32(depth_scale / 1000.0)
        values = to_dict(MatcherConfig())
        values.update(_yaml_section(config, "matcher"))
        for key, v in (("max_detections", max_detections), ("score_threshold", threshold),
                       ("device", device)):
            if v is not None:
                values[key] = v
        mcfg = from_mapping(MatcherConfig, values, source="matcher options")
        hyps = Matcher(lib, mcfg).match(image, dmap, cam)
    if as_json:
        print_json({"templates": str(templates), "model": lib.model_name,
                    "units": {"t": "m", "rotvec": "rad", "x_y_bbox": "px"},
                    "hypotheses": [h.to_dict(lib) for h in hyps]})
        return
    table = Table("rank", "template", "x [px]", "y [px]", "score", "t [m]", "rot [deg]",
                  title=f"{lib.model_name}: {len(hyps)} hypotheses")
    for i, h in enumerate(hyps):
        d = h.to_dict()
        ang = math.degrees(float(np.linalg.norm(d["T_cam_obj"]["rotvec_rad"])))
        table.add_row(str(i + 1), str(h.template_id), str(h.x), str(h.y), f"{h.score:.3f}",
                      " ".join(f"{v:.3f}" for v in d["T_cam_obj"]["t_m"]), f"{ang:.1f}")
    console.print(table)
