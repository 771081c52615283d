"""Embedded twin renderer speed: frames per second at 640x480 for 5k, 20k and 100k triangles.

A procedural flange is subdivided and then decimated (Open3D quadric decimation) to exactly the
requested triangle count, placed on a table at a typical working distance (0.5 m, ~15 % of the
image) and close up (0.2 m, most of the image), and rendered with the full sensor model (shading,
defocus, shot/read noise, depth noise, grazing/edge invalidation, quantisation) and without it.
Per-stage medians split the time into ray casting, shading, and sensor model.

Writes docs/benchmarks/renderer.{json,md,png}. Target (issue 2): >= 30 fps for 20k triangles
with the sensor model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import open3d as o3d
import trimesh

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.geometry import make_pose, rotation_from_rotvec
from weak_template_ros.models import make_part
from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject, TablePlane
from weak_template_ros.twin.sensor import SensorModel

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def mesh_with_triangles(n: int) -> trimesh.Trimesh:
    """The flange part with exactly ``n`` triangles (subdivide, then quadric decimation)."""
    m = make_part("flange", seed=0).mesh
    while len(m.faces) < n:
        m = m.subdivide()
    o = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(m.vertices), o3d.utility.Vector3iVector(m.faces))
    o = o.simplify_quadric_decimation(target_number_of_triangles=n)
    return trimesh.Trimesh(np.asarray(o.vertices), np.asarray(o.triangles), process=False)


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def time_view(r: Renderer, T: np.ndarray, table: TablePlane, sensor: SensorModel,
              rng: np.random.Generator, repeats: int) -> tuple[float, float, float]:
    """Median ms of: ray cast alone, exact render (cast + shading), render with the sensor model."""
    objs = [SceneObject("part", T, albedo=0.7, specular=0.2)]
    light = Lighting()
    return (median_ms(lambda: r.cast_object("part", T), repeats),
            median_ms(lambda: r.render(objs, table=table, lighting=light), repeats),
            median_ms(lambda: r.render(objs, table=table, lighting=light, sensor=sensor, rng=rng), repeats))


def run(repeats: int) -> dict:
    cam = CameraIntrinsics.from_fov(640, 480, 60)
    sensor = SensorModel()
    rng = np.random.default_rng(0)
    R = rotation_from_rotvec([2.2, 0.3, 0.1])
    rows = []
    for n in (5_000, 20_000, 100_000):
        mesh = mesh_with_triangles(n)
        r = Renderer(cam)
        r.add_mesh("part", mesh)
        for label, dist in (("typical, 0.5 m", 0.5), ("close-up, 0.2 m", 0.2)):
            T = make_pose(R, [0.0, 0.0, dist])
            table = TablePlane(make_pose(np.diag([1.0, -1.0, -1.0]), [0, 0, dist + 0.04]))
            t_cast, t_exact, t_full = time_view(r, T, table, sensor, rng, repeats)
            coverage = float((r.cast_object("part", T)[0] > 0).mean())
            rows.append({"triangles": len(mesh.faces), "view": label, "coverage": coverage,
                         "cast_ms": t_cast, "exact_ms": t_exact, "with_sensor_ms": t_full,
                         "shading_ms": t_exact - t_cast, "sensor_ms": t_full - t_exact,
                         "fps_with_sensor": 1000 / t_full, "fps_exact": 1000 / t_exact})
            print(f"{len(mesh.faces):>7} tris {label:16s} coverage {coverage:5.1%}  cast {t_cast:6.1f} ms  "
                  f"exact {t_exact:6.1f} ms  +sensor {t_full:6.1f} ms  -> {1000 / t_full:5.1f} fps")
    return {
        "benchmark": "twin renderer, 640x480, Open3D RaycastingScene (CPU) + sensor model",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1min_at_end": os.getloadavg()[0], "open3d": o3d.__version__},
        "repeats": repeats, "target": ">= 30 fps for 20k triangles with the sensor model",
        "results": rows,
    }


def write(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "renderer.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Twin renderer speed (640x480)", "",
             f"{result['benchmark']}. Median of {result['repeats']} frames after a warm-up; "
             f"{result['machine']['cpus']} CPU cores, 1-min load average at the end "
             f"{result['machine']['load_avg_1min_at_end']:.1f}. Target: {result['target']}.", "",
             "| triangles | view | image coverage | ray cast ms | shading ms | sensor model ms "
             "| total ms | fps (with sensor) | fps (exact) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["results"]:
        lines.append(f"| {r['triangles']} | {r['view']} | {r['coverage']:.1%} | {r['cast_ms']:.1f} | "
                     f"{r['shading_ms']:.1f} | {r['sensor_ms']:.1f} | {r['with_sensor_ms']:.1f} | "
                     f"{r['fps_with_sensor']:.1f} | {r['fps_exact']:.1f} |")
    lines += ["", "Shading (Lambert + ambient + Blinn-Phong, table plane) and the sensor model work on "
              "every pixel, so they cost the same at any triangle count; ray casting is limited to the "
              "object's projected bounding box.", "", "![fps vs triangles](renderer.png)", ""]
    (OUT / "renderer.md").write_text("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4))
    for view in dict.fromkeys(r["view"] for r in result["results"]):
        rs = [r for r in result["results"] if r["view"] == view]
        tris = [r["triangles"] for r in rs]
        ax.plot(tris, [r["fps_with_sensor"] for r in rs], "o-", label=f"{view}, sensor")
        ax.plot(tris, [r["fps_exact"] for r in rs], "s--", label=f"{view}, exact")
    ax.axhline(30, color="k", lw=0.8, ls=":", label="target 30 fps")
    ax.set_xscale("log")
    ax.set_xlabel("triangles")
    ax.set_ylabel("frames per second (640x480)")
    ax.set_title("Twin renderer speed")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "renderer.png", dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30, help="timed frames per configuration")
    args = ap.parse_args()
    write(run(args.repeats))


if __name__ == "__main__":
    main()
