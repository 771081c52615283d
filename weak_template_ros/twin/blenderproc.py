"""BlenderProc backend of the digital twin: photoreal Cycles renders of the same scenes.

The scene of a :class:`~weak_template_ros.twin.scenes.SceneSpec` (the same seeded arrangement,
cameras, lights and occluders as the embedded renderer) is written as a job JSON plus mesh files,
rendered by ``sim/twin_scene.py`` under ``blenderproc run --custom-blender-path`` in a separate
environment (``make sim-setup`` builds it into ``sim/blenderproc_env``), and the outputs are
turned into :class:`~weak_template_ros.twin.bop.BopFrame` s with the embedded backend's ground
truth conventions:

* poses, ``T_cam_world`` and the full silhouettes (``mask``, ``px_count_all``, ``bbox_obj``) are
  the embedded renderer's (exact geometry, no render involved);
* colour is Cycles' linear radiance through the project's :class:`SensorModel` (or rounded to
  8 bits with ``noise=False``), exactly as the embedded backend treats its own radiance;
* depth and the visible masks come from Cycles (one pixel-centred sample, so they agree with the
  ray caster: :func:`compare_backends` measures how well).

BlenderProc never downloads anything here: the environment is pre-built, ``PIP_NO_INDEX=1`` is
set, and ``--custom-blender-path`` is always given.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose
from weak_template_ros.models import PartModel
from weak_template_ros.twin.bop import BopFrame, BopWriter, ObjectAnnotation
from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject, TablePlane
from weak_template_ros.twin.scenes import (
    FrameLayout,
    SceneSpec,
    annotate_frame,
    arrange_scene,
    iter_frame_layouts,
    iter_scene_frames,
    scene_renderers,
    share_meshes,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where `make sim-setup` builds the environment; WEAK_TEMPLATE_BLENDERPROC_ENV overrides it.
DEFAULT_ENV_DIR = REPO_ROOT / "sim" / "blenderproc_env"
ENV_VAR = "WEAK_TEMPLATE_BLENDERPROC_ENV"
SIM_DIR = REPO_ROOT / "sim"
JOB_FORMAT = "weak_template_ros.blenderproc_job/1"
RESULT_FORMAT = "weak_template_ros.blenderproc_result/1"
SETUP_HINT = "run `make sim-setup` in the project folder to build it"

#: Principled-BSDF presets of the "pbr" material mode: name -> (metallic, roughness range,
#: anisotropic, coat, base colour range (linear RGB)).
PBR_PRESETS = {
    "brushed_metal": (1.0, (0.25, 0.4), 0.7, 0.0, ((0.55, 0.55, 0.56), (0.75, 0.75, 0.77))),
    "anodised_metal": (1.0, (0.3, 0.5), 0.0, 0.0, ((0.1, 0.1, 0.2), (0.6, 0.4, 0.7))),
    "matte_plastic": (0.0, (0.6, 0.9), 0.0, 0.0, ((0.05, 0.05, 0.05), (0.8, 0.8, 0.8))),
    "glossy_plastic": (0.0, (0.08, 0.25), 0.0, 0.6, ((0.05, 0.05, 0.05), (0.8, 0.8, 0.8))),
}


class BlenderProcError(RuntimeError):
    """BlenderProc ran but failed; the message holds the end of its log and the log's path."""


@dataclass
class BlenderProcConfig:
    """How the BlenderProc backend renders (Cycles on the CPU)."""

    samples: int = param(16, "Cycles samples per pixel (always set: BlenderProc's default is 1024)",
                         lo=1, hi=4096)
    denoiser: str = param("none", "denoiser after sampling (always set: BlenderProc's default is "
                          "Intel's, +3-12 s per VGA frame here)", choices=("none", "intel"))
    filter_width_px: float = param(1.5, "pixel filter width of the colour image (anti-aliasing); "
                                   "depth and masks always use one pixel-centred sample",
                                   lo=0.01, hi=10.0, unit="px")
    max_bounces: int = param(3, "light bounces (diffuse and glossy)", lo=0, hi=32)
    threads: int = param(0, "Cycles CPU threads (0: one per core)", lo=0, hi=1024)
    materials: str = param("twin", "twin: grey dielectric materials from the SceneSpec (as the "
                           "embedded renderer); pbr: seeded metal/plastic presets per part",
                           choices=("twin", "pbr"))
    smooth_angle_deg: float = param(30.0, "edges sharper than this stay sharp, the rest is shaded "
                                    "smooth (0: flat faces, as the embedded renderer)", lo=0.0,
                                    hi=180.0, unit="deg")
    table_half_size: float = param(5.0, "half size of the table plane (the embedded table is "
                                   "infinite)", lo=0.1, hi=1000.0, unit="m")
    timeout_s: float = param(3600.0, "time limit of one BlenderProc run (one scene)", lo=1.0,
                             hi=1e6, unit="s")
    noise_threshold: float = param(0.0, "adaptive sampling: a pixel stops once its noise is below "
                                   "this (0: off, every pixel gets all samples)", lo=0.0, hi=1.0)
    adaptive_min_samples: int = param(0, "adaptive sampling: samples before a pixel may stop (0: "
                                      "Cycles' automatic choice)", lo=0, hi=4096)
    caustics: bool = param(True, "reflective/refractive caustic paths (off: faster, less "
                           "glossy-to-diffuse light)")
    tile_size: int = param(0, "Cycles render tile size (0: Cycles' default, 2048)", lo=0, hi=8192,
                           unit="px")
    persistent_data: bool = param(True, "keep Cycles' scene data (BVH, images) between the frames "
                                  "of a run (BlenderProc's choice)")
    gt_pass: str = param("cycles", "where depth and visible masks come from: cycles (a second, "
                         "one-sample pixel-centred render) or embedded (the exact ray caster: "
                         "compare_backends measures them equal, <= 0.02 mm, IoU 1.0)",
                         choices=("cycles", "embedded"))
    physics: bool = param(False, "drop the parts with physics onto the table (sim/parts_on_table.py: "
                          "seeded lift and orientation, distractors and table as obstacles); the "
                          "ground truth is then the settled poses")
    drop_height_m: tuple = param((0.05, 0.15), "physics: lift of each part above its arranged pose, "
                                 "min and max", unit="m")


# ----------------------------------------------------------------------------------------------
# The environment


@dataclass(frozen=True)
class BlenderProcEnv:
    """The pre-built BlenderProc environment (see ``sim/build_env.py``)."""

    root: Path

    @property
    def blender_dir(self) -> Path:
        """The ``--custom-blender-path`` folder."""
        return self.root / "blender"

    @property
    def python(self) -> Path:
        return self.blender_dir / "4.2" / "python" / "bin" / "python3.11"

    @property
    def cli(self) -> Path:
        """BlenderProc's command-line entry (run with :attr:`python`)."""
        return self.root / "blenderproc" / "blenderproc" / "command_line.py"

    @property
    def stamp(self) -> dict:
        return json.loads((self.root / "stamp.json").read_text())

    @classmethod
    def locate(cls, root: str | Path | None = None) -> BlenderProcEnv:
        """The environment at ``root`` (default: ``$WEAK_TEMPLATE_BLENDERPROC_ENV`` or
        ``sim/blenderproc_env``), checked.

        Raises
        ------
        InputError
            When it is missing or incomplete; the message names ``make sim-setup``.
        """
        root = Path(root or os.environ.get(ENV_VAR) or DEFAULT_ENV_DIR)
        env = cls(root)
        what = f"BlenderProc environment {root}"
        if not root.is_dir():
            raise InputError(what, f"a built environment ({SETUP_HINT})", "no such folder")
        needed = [root / "stamp.json", env.blender_dir / "blender", env.python, env.cli,
                  env.blender_dir / "custom-python-packages" / "installed_packages_cache_v2.json"]
        missing = [str(p.relative_to(root)) for p in needed if not p.exists()]
        if missing:
            raise InputError(what, f"a complete environment ({SETUP_HINT})",
                             f"missing {', '.join(missing)} (an interrupted or broken build)")
        if not os.access(env.blender_dir / "blender", os.X_OK) or not os.access(env.python, os.X_OK):
            raise InputError(what, f"executable blender and python files ({SETUP_HINT})",
                             "files that cannot be executed")
        try:
            env.stamp  # noqa: B018 (a readable stamp is part of a complete build)
        except (OSError, ValueError) as e:
            raise InputError(what, f"a readable stamp.json ({SETUP_HINT})", f"{type(e).__name__}: {e}") from e
        return env

    def run(self, script: Path, args: list[str], log_path: Path, timeout_s: float = 3600.0) -> float:
        """``blenderproc run --custom-blender-path ... script args``; returns the wall time (s).

        Raises
        ------
        BlenderProcError
            On a non-zero exit or a timeout, with the end of the log.
        """
        tmp = Path(tempfile.mkdtemp(prefix="bproc_tmp_", dir=log_path.parent))
        cmd = [str(self.python), str(self.cli), "run", "--custom-blender-path", str(self.blender_dir),
               "--temp-dir", str(tmp), str(script), *map(str, args)]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PYTHON", "INSIDE_OF_THE_INTERNAL", "OUTSIDE_OF_THE_INTERNAL"))}
        # Nothing may be installed at run time: a stale package cache fails instead of downloading.
        env.update(PIP_NO_INDEX="1", PYTHONNOUSERSITE="1", PYTHONUNBUFFERED="1")
        t0 = time.perf_counter()
        try:
            with open(log_path, "w") as log:
                # Own process group: a timeout or Ctrl-C ends Blender too, not only BlenderProc's CLI.
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                try:
                    returncode = proc.wait(timeout=timeout_s)
                except BaseException as e:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    if isinstance(e, subprocess.TimeoutExpired):
                        raise BlenderProcError(f"BlenderProc ran past {timeout_s} s: {script.name}\n"
                                               f"{_tail(log_path)}\n(log: {log_path})") from e
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if returncode != 0:
            raise BlenderProcError(f"BlenderProc failed (exit {returncode}) on {script.name}:\n"
                                   f"{_tail(log_path)}\n(log: {log_path})")
        return time.perf_counter() - t0


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# Scene -> job


def _frame_layouts(models, spec: SceneSpec, seed: int, scene_id: int, renderer: Renderer):
    """The arrangement and every frame's layout, drawn exactly as iter_scene_frames draws them
    (occluder meshes stay registered: the job needs them all at once)."""
    renderer, lowres, _ = scene_renderers(spec.camera, renderer)
    placed = arrange_scene(models, spec, seed, scene_id, renderer)
    share_meshes(renderer, placed, lowres)
    return placed, list(iter_frame_layouts(spec, seed, scene_id, placed, renderer, lowres))


def _pbr_material(rng: np.random.Generator) -> dict:
    name = list(PBR_PRESETS)[rng.integers(len(PBR_PRESETS))]
    metallic, (r0, r1), aniso, coat, (c0, c1) = PBR_PRESETS[name]
    return {"preset": name, "metallic": metallic, "roughness": float(rng.uniform(r0, r1)),
            "anisotropic": aniso, "coat": coat,
            "base_color": [float(v) for v in rng.uniform(c0, c1)], "specular": 0.5}


def _twin_material(albedo: float, specular: float) -> dict:
    # Blinn-Phong strength -> a dielectric whose lobe is about as strong (F0 0.04 at level 0.5).
    return {"base_color": [albedo] * 3, "metallic": 0.0, "roughness": 0.35,
            "specular": float(np.clip(0.5 + 2.0 * specular, 0.0, 1.0))}


@dataclass
class SceneLayout:
    """One scene as both backends see it: placed objects (scenes.PlacedObject, parts first), the
    frames' cameras/lights/occluders, and an embedded renderer holding every mesh."""

    placed: list
    frames: list[FrameLayout]
    renderer: Renderer


def build_job(models: dict[int, PartModel], spec: SceneSpec, seed: int, scene_id: int,
              cfg: BlenderProcConfig, work_dir: Path) -> tuple[dict, SceneLayout]:
    """The job JSON (and mesh files in ``work_dir/meshes``) of one scene, and its layout."""
    validate(spec)
    validate(cfg)
    renderer = Renderer(spec.camera)
    placed, layouts = _frame_layouts(models, spec, seed, scene_id, renderer)
    mesh_dir = work_dir / "meshes"
    mesh_dir.mkdir(parents=True, exist_ok=True)
    meshes, materials, objects = {}, {}, []
    mat_rng = np.random.default_rng([seed, scene_id, 2])

    def add(p, frames=None):
        key = "_".join(str(k) for k in (p.key if isinstance(p.key, tuple) else (p.key,)))
        if key not in meshes:
            mesh = renderer.mesh(p.key)
            path = mesh_dir / f"{key}.npz"
            np.savez(path, vertices=np.asarray(mesh.vertices, np.float64),
                     faces=np.asarray(mesh.faces, np.int64))
            meshes[key] = str(path)
        name = f"{key}_f{frames[0]}" if frames else key
        if cfg.materials == "pbr" and p.obj_id is not None:
            materials[name] = _pbr_material(mat_rng)
        else:
            materials[name] = _twin_material(p.albedo, p.specular)
        objects.append({"name": name, "mesh": key, "material": name,
                        "T_world_obj": np.asarray(p.T_world_obj).tolist(), "frames": frames,
                        "annotated": p.obj_id is not None,
                        "smooth_angle_deg": cfg.smooth_angle_deg})

    for p in placed:
        add(p)
    for im_id, lay in enumerate(layouts):
        if lay.occluder is not None:
            add(lay.occluder, [im_id])
    materials["table"] = {"base_color": [spec.table_albedo] * 3, "metallic": 0.0, "roughness": 0.8,
                          "specular": 0.3}
    lights = []
    for im_id, lay in enumerate(layouts):
        lights.append(_sun(lay.T_world_cam, lay.lighting, im_id))
    # Uniform environment = the embedded ambient term; one environment serves every frame.
    ambient = float(np.mean([lay.lighting.ambient for lay in layouts]))
    cam = spec.camera
    job = {
        "format": JOB_FORMAT,
        "camera": {"K": cam.K.reshape(-1).tolist(), "width": cam.width, "height": cam.height,
                   "clip_start": 0.01, "clip_end": 100.0},
        "render": {"samples": cfg.samples, "denoiser": None if cfg.denoiser == "none" else "INTEL",
                   "noise_threshold": cfg.noise_threshold, "adaptive_min_samples": cfg.adaptive_min_samples,
                   "caustics": cfg.caustics, "tile_size": cfg.tile_size,
                   "persistent_data": cfg.persistent_data,
                   "gt_pass": cfg.gt_pass == "cycles", "filter_width_px": cfg.filter_width_px,
                   "threads": cfg.threads, "max_bounces": cfg.max_bounces,
                   "seed": int(np.random.default_rng([seed, scene_id, 3]).integers(2**31 - 1))},
        "meshes": meshes, "materials": materials, "objects": objects,
        "table": {"half_size": cfg.table_half_size, "material": "table"},
        "world": {"color": [ambient] * 3, "strength": 1.0},
        "lights": lights,
        "frames": [{"T_world_cam": lay.T_world_cam.tolist()} for lay in layouts],
    }
    return job, SceneLayout(placed, layouts, renderer)


def _sun(T_world_cam: np.ndarray, lighting: Lighting, im_id: int) -> dict:
    """The embedded directional light as a Blender sun (shines along its -z axis)."""
    to_light = T_world_cam[:3, :3] @ np.asarray(lighting.direction, float)
    z = to_light / np.linalg.norm(to_light)
    x = np.cross([0.0, 0.0, 1.0] if abs(z[2]) < 0.9 else [1.0, 0.0, 0.0], z)
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
    T[:3, 3] = 2.0 * z
    # Sun strength is irradiance: Lambert radiance = albedo * strength / pi * cos.
    return {"name": f"sun_f{im_id}", "type": "SUN", "T_world_light": T.tolist(),
            "energy": float(lighting.intensity * math.pi), "angle_deg": 0.5, "frames": [im_id]}


# ----------------------------------------------------------------------------------------------
# Rendering and BOP frames


@dataclass
class BlenderProcFrames:
    """Raw outputs of one BlenderProc run: per frame radiance (H, W, 3) float32, depth (H, W)
    float32 metres (0: none) and instance (H, W) int16 (annotated-object index, -1: none); depth
    and instance are None for colour-only scripts."""

    radiance: list[np.ndarray]
    depth: list[np.ndarray]
    instance: list[np.ndarray]
    result: dict
    wall_s: float


def run_job(job: dict, work_dir: Path, env: BlenderProcEnv | None = None,
            script: str | Path = "twin_scene.py", timeout_s: float = 3600.0) -> BlenderProcFrames:
    """Render a job with BlenderProc (``sim/<script>``) and load its outputs."""
    env = env or BlenderProcEnv.locate()
    work_dir = Path(work_dir)
    out_dir = work_dir / "out"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    job_path = work_dir / "job.json"
    job_path.write_text(json.dumps(job))
    script = Path(script) if Path(script).is_absolute() else SIM_DIR / script
    wall = env.run(script, [job_path.resolve(), out_dir.resolve()], work_dir / "blenderproc.log",
                   timeout_s)
    result_path = out_dir / "result.json"
    if not result_path.is_file():
        raise BlenderProcError(f"{script.name} ended without writing {result_path}:\n"
                               f"{_tail(work_dir / 'blenderproc.log')}")
    result = json.loads(result_path.read_text())
    if result.get("format") != RESULT_FORMAT or result.get("frames") != len(job["frames"]):
        raise BlenderProcError(f"{result_path}: expected {len(job['frames'])} frames of format "
                               f"{RESULT_FORMAT}, got {result.get('frames')} of {result.get('format')}")
    radiance, depth, instance = [], [], []
    for k in range(result["frames"]):
        with np.load(out_dir / f"frame_{k:06d}.npz") as z:
            radiance.append(z["radiance"])
            # Colour-only scripts (mark_scene.py) write no depth or instance pass.
            depth.append(z["depth"] if "depth" in z else None)
            instance.append(z["instance"] if "instance" in z else None)
    return BlenderProcFrames(radiance, depth, instance, result, wall)


def iter_blenderproc_frames(models: dict[int, PartModel], spec: SceneSpec, seed: int, scene_id: int,
                            cfg: BlenderProcConfig | None = None, env: BlenderProcEnv | None = None,
                            work_dir: str | Path | None = None) -> Iterator[BopFrame]:
    """Frames of one scene rendered by BlenderProc, annotated like
    :func:`~weak_template_ros.twin.scenes.iter_scene_frames` (same values, same scene).

    Parameters
    ----------
    models, spec, seed, scene_id :
        As for the embedded backend.
    cfg : BlenderProcConfig, optional
    env : BlenderProcEnv, optional
        Default: :meth:`BlenderProcEnv.locate`.
    work_dir : path, optional
        Where the job, meshes, log and raw outputs go (default: a temporary folder, removed).

    Raises
    ------
    InputError
        Missing environment (names ``make sim-setup``) or bad spec/config.
    BlenderProcError
        BlenderProc failed (the message holds the end of its log).
    """
    for frame, _gt, _raw in _iter_frame_triples(models, spec, seed, scene_id, cfg, env, work_dir):
        yield frame


def _iter_frame_triples(models, spec, seed, scene_id, cfg, env, work_dir):
    """(BlenderProc BopFrame, exact embedded BopFrame, raw outputs of the frame) per frame."""
    cfg = cfg or BlenderProcConfig()
    env = env or BlenderProcEnv.locate()
    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="wt_blenderproc_")
        work_dir = tmp
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        job, layout = build_job(models, spec, seed, scene_id, cfg, work_dir)
        if cfg.physics:
            lo, hi = sorted(float(h) for h in cfg.drop_height_m)
            job["physics"] = {"seed": int(np.random.default_rng([seed, scene_id, 4]).integers(2**31 - 1)),
                              "drop_height_min": lo, "drop_height_max": hi,
                              "min_time_s": 1.0, "max_time_s": 6.0}
            raw = run_job(job, work_dir, env, script="parts_on_table.py", timeout_s=cfg.timeout_s)
            layout = _settled_layout(layout, raw.result["objects"])
            gt_frames = _exact_frames(spec, layout, scene_id)
        else:
            raw = run_job(job, work_dir, env, timeout_s=cfg.timeout_s)
            gt_frames = iter_scene_frames(models, replace(spec, noise=False), seed, scene_id)
        for im_id, (gt, lay) in enumerate(zip(gt_frames, layout.frames, strict=True)):
            if raw.depth[im_id] is None:  # gt_pass "embedded": the exact ray caster's passes
                raw.depth[im_id] = gt.depth
                raw.instance[im_id] = np.full(gt.depth.shape, -1, np.int16)
                for i, o in enumerate(gt.objects):
                    raw.instance[im_id][o.mask_visib] = i
            frame = _bop_frame(gt, lay, raw, im_id, spec, layout)
            yield frame, gt, {"radiance": raw.radiance[im_id], "depth": raw.depth[im_id],
                              "instance": raw.instance[im_id], "result": raw.result,
                              "wall_s": raw.wall_s}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _settled_layout(layout: SceneLayout, settled: list[dict]) -> SceneLayout:
    """The layout with the parts at the poses BlenderProc's physics left them in (``result.json``
    lists the annotated parts in job order: the placed parts in order)."""
    poses = iter(np.asarray(o["T_world_obj"], float) for o in settled)
    n_parts = sum(p.obj_id is not None for p in layout.placed)
    if n_parts != len(settled):
        raise BlenderProcError(f"parts_on_table.py returned {len(settled)} settled parts, expected {n_parts}")
    placed = [replace(p, T_world_obj=next(poses)) if p.obj_id is not None else p for p in layout.placed]
    return SceneLayout(placed, layout.frames, layout.renderer)


def _exact_frames(spec: SceneSpec, layout: SceneLayout, scene_id: int) -> Iterator[BopFrame]:
    """Exact, noise-free frames of a layout by the embedded renderer, annotated as
    :func:`~weak_template_ros.twin.scenes.iter_scene_frames` annotates (full and visible masks,
    BOP's px_count_all and bbox_obj over the 3x canvas for parts cut by the border). Used where
    the poses are not the seeded arrangement's (physics)."""
    camera = spec.camera
    renderer, _, ext = scene_renderers(camera, layout.renderer)
    for lay in layout.frames:
        T_cam_world = invert_pose(lay.T_world_cam)
        frame_objects = [*layout.placed, *([lay.occluder] if lay.occluder is not None else [])]
        share_meshes(renderer, frame_objects, ext)
        objs = [SceneObject(p.key, T_cam_world @ p.T_world_obj, albedo=p.albedo, specular=p.specular)
                for p in frame_objects]
        out = renderer.render(objs, table=TablePlane(T_cam_world, spec.table_albedo), lighting=lay.lighting)
        annotations = annotate_frame(out, frame_objects, objs, ext)
        yield BopFrame(rgb=out.rgb, depth=out.depth, camera=camera, objects=annotations,
                       T_cam_world=T_cam_world, scene_id=scene_id, im_id=lay.im_id)


def _bop_frame(gt: BopFrame, lay: FrameLayout, raw: BlenderProcFrames, im_id: int, spec: SceneSpec,
               layout: SceneLayout) -> BopFrame:
    """BlenderProc images + the embedded ground truth, through the same sensor model."""
    radiance, depth, instance = raw.radiance[im_id], raw.depth[im_id], raw.instance[im_id]
    rng = lay.rng  # continues where the layout draws stopped, as the embedded sensor's does
    if spec.noise:
        rgb = spec.sensor.apply_rgb(radiance, rng)
        T_cam_world = invert_pose(lay.T_world_cam)
        objs = [SceneObject(p.key, T_cam_world @ p.T_world_obj)
                for p in [*layout.placed, *([lay.occluder] if lay.occluder is not None else [])]]
        # Incidence angles for the depth model from the exact geometry (same scene, same pixels).
        normals = layout.renderer.render(objs, table=TablePlane(T_cam_world)).normals
        rays = spec.camera.ray_directions()
        cos_inc = np.abs(np.einsum("hwc,hwc->hw", normals, rays)) / np.linalg.norm(rays, axis=-1)
        depth = spec.sensor.apply_depth(depth, cos_inc, rng)
    else:
        rgb = np.clip(radiance * 255.0 + 0.5, 0, 255).astype(np.uint8)
    objects = []
    for i, o in enumerate(gt.objects):
        # A pixel-centre sample 0.005 px off the centre can see an edge the ray caster missed.
        visib = (instance == i) & o.mask
        objects.append(ObjectAnnotation(obj_id=o.obj_id, T_cam_obj=o.T_cam_obj, mask=o.mask,
                                        mask_visib=visib, px_count_all=o.px_count_all,
                                        bbox_obj=o.bbox_obj))
    return BopFrame(rgb=rgb, depth=depth.astype(np.float32), camera=gt.camera, objects=objects,
                    T_cam_world=gt.T_cam_world, scene_id=gt.scene_id, im_id=gt.im_id)


def generate_dataset_blenderproc(out_dir: str | Path, models: dict[int, PartModel], spec: SceneSpec,
                                 n_scenes: int, seed: int = 0, split: str = "test",
                                 first_scene: int = 0, cfg: BlenderProcConfig | None = None,
                                 env: BlenderProcEnv | None = None,
                                 on_frame: Callable[[BopFrame], None] | None = None,
                                 keep_work: bool = False) -> Path:
    """Render ``n_scenes`` scenes with BlenderProc into a BOP dataset, laid out as
    :func:`~weak_template_ros.twin.scenes.generate_dataset` lays out the embedded ones.

    One BlenderProc run per scene (all its frames); with ``keep_work`` each run's job, meshes and
    log stay in ``OUT/.blenderproc_work/<scene_id>`` (hidden: not a split).
    """
    out_dir = Path(out_dir)
    env = env or BlenderProcEnv.locate()  # fail before writing anything
    with BopWriter(out_dir, split=split) as writer:
        writer.write_camera(spec.camera, depth_scale=0.1)
        writer.write_models(models)
        for scene_id in range(first_scene, first_scene + n_scenes):
            work = out_dir / ".blenderproc_work" / f"{scene_id:06d}" if keep_work else None
            for frame in iter_blenderproc_frames(models, spec, seed, scene_id, cfg, env, work):
                writer.write_frame(scene_id, frame.im_id, frame)
                if on_frame is not None:
                    on_frame(frame)
            writer.flush()
    return out_dir


# ----------------------------------------------------------------------------------------------
# Calibration: the same scene through both backends

#: Cross-backend agreement required by the calibration check.
DEPTH_TOLERANCE_M = 0.001
MASK_IOU_MIN = 0.99
#: Pixels next to a depth jump larger than this (or a change of visible object) are edges, not
#: surfaces: there a sample a fraction of a pixel away may land on the other side.
EDGE_JUMP_M = 0.01


def _surface_pixels(depth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Pixels with depth whose 3x3 neighbourhood has the same label and no jump > EDGE_JUMP_M."""
    pad_d = np.pad(depth, 1, mode="edge")
    pad_l = np.pad(labels, 1, mode="edge")
    ok = depth > 0
    H, W = depth.shape
    for dy in range(3):
        for dx in range(3):
            nd = pad_d[dy:dy + H, dx:dx + W]
            nl = pad_l[dy:dy + H, dx:dx + W]
            ok &= (nd > 0) & (np.abs(nd - depth) <= EDGE_JUMP_M) & (nl == labels)
    return ok


def compare_frame(gt: BopFrame, depth: np.ndarray, instance: np.ndarray) -> dict:
    """Agreement of one BlenderProc frame (raw depth, instance map) with the exact embedded one.

    Returns
    -------
    dict
        ``surface_px`` (pixels compared), ``depth_max_abs_m``, ``depth_p99_abs_m`` (on surface
        pixels: both hit, same visible object, away from edges), ``mask_iou`` (visible mask IoU per
        annotated object, 1.0 when both are empty), ``labels_agree`` (fraction of all pixels
        whose first-hit object agrees).
    """
    labels = np.full(gt.depth.shape, -1, np.int16)
    for i, o in enumerate(gt.objects):
        labels[o.mask_visib] = i
    surface = _surface_pixels(gt.depth, labels) & (depth > 0) & (instance == labels)
    diff = np.abs(depth.astype(np.float64) - gt.depth)[surface]
    ious = []
    for i, o in enumerate(gt.objects):
        a, b = o.mask_visib, instance == i
        union = int(np.count_nonzero(a | b))
        ious.append(1.0 if union == 0 else int(np.count_nonzero(a & b)) / union)
    return {"surface_px": int(surface.sum()),
            "depth_max_abs_m": float(diff.max()) if diff.size else 0.0,
            "depth_p99_abs_m": float(np.percentile(diff, 99)) if diff.size else 0.0,
            "mask_iou": ious, "labels_agree": float(np.mean(instance == labels))}


def compare_backends(models: dict[int, PartModel], spec: SceneSpec, seed: int = 0, scene_id: int = 0,
                     cfg: BlenderProcConfig | None = None, env: BlenderProcEnv | None = None,
                     work_dir: str | Path | None = None) -> dict:
    """The calibration check: one scene spec rendered by both backends.

    Checks that BlenderProc placed every part at the pose the embedded ground truth states
    (``pose_max_abs``: largest entry of ``T_blender - T_spec`` over parts, metres/unitless),
    that depth agrees within :data:`DEPTH_TOLERANCE_M` on surfaces and that visible masks
    overlap with IoU >= :data:`MASK_IOU_MIN`.

    Returns
    -------
    dict
        ``frames`` (per-frame :func:`compare_frame` records), ``pose_max_abs``,
        ``depth_max_abs_m``, ``min_mask_iou``, ``passed``, ``blenderproc_wall_s`` (the whole
        BlenderProc run) and ``timing`` (its colour and ground-truth renders, seconds).
    """
    frames, pose_dev, wall, timing = [], 0.0, 0.0, {}
    # Depth and masks must come from Cycles to be compared.
    cfg = replace(cfg or BlenderProcConfig(), gt_pass="cycles")
    for frame, gt, raw in _iter_frame_triples(models, spec, seed, scene_id, cfg, env, work_dir):
        # Blender's object matrices, in job order: the annotated parts of scenes.arrange_scene.
        for o, g in zip(raw["result"]["objects"], gt.objects, strict=True):
            T_bp = gt.T_cam_world @ np.asarray(o["T_world_obj"], float)
            pose_dev = max(pose_dev, float(np.abs(T_bp - g.T_cam_obj).max()))
        wall, timing = raw["wall_s"], raw["result"]["timing"]
        rec = compare_frame(gt, raw["depth"], raw["instance"])
        rec["im_id"] = frame.im_id
        frames.append(rec)
    depth_max = max(f["depth_max_abs_m"] for f in frames)
    min_iou = min(min(f["mask_iou"], default=1.0) for f in frames)
    return {"frames": frames, "pose_max_abs": pose_dev, "depth_max_abs_m": depth_max,
            "min_mask_iou": min_iou, "blenderproc_wall_s": wall, "timing": timing,
            "passed": bool(pose_dev < 1e-5 and depth_max <= DEPTH_TOLERANCE_M and min_iou >= MASK_IOU_MIN)}


# ----------------------------------------------------------------------------------------------
# Mark scenes: an alignment mark on a specular wafer or a glossy PCB (sim/mark_scene.py)

MARK_JOB_FORMAT = "weak_template_ros.blenderproc_mark_job/1"
#: Principled-BSDF values (linear RGB) of the mark scenes' surfaces: (background, mark).
MARK_SURFACES = {
    # Polished silicon: metal-like, ~35 % specular reflectance, mirror smooth; an aluminium mark,
    # brighter and rougher (a deposited film).
    "wafer": ({"base_color": [0.34, 0.36, 0.40], "metallic": 1.0, "roughness": 0.05},
              {"base_color": [0.91, 0.92, 0.92], "metallic": 1.0, "roughness": 0.3}),
    # Green solder mask (a diffuse green dielectric under a glossy clear coat) and an ENIG gold
    # fiducial.
    "pcb": ({"base_color": [0.02, 0.20, 0.04], "metallic": 0.0, "roughness": 0.4, "coat": 1.0,
             "coat_roughness": 0.05},
            {"base_color": [0.95, 0.75, 0.40], "metallic": 1.0, "roughness": 0.15}),
}
#: Rec. 709 luminance of linear RGB: the monochrome alignment camera's response.
LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


@dataclass
class MarkRenderConfig:
    """How BlenderProc renders mark images (the mark itself is a :class:`~weak_template_ros.twin.
    marks.MarkSpec`)."""

    surface: str = param("wafer", "wafer: polished silicon with an aluminium mark; pcb: glossy "
                         "green solder mask with a gold fiducial", choices=tuple(MARK_SURFACES))
    light: str = param("coaxial", "coaxial: bright field along the optical axis; ring: a ring of "
                       "lamps around it", choices=("coaxial", "ring"))
    samples: int = param(16, "Cycles samples per pixel", lo=1, hi=4096)
    pixel_size_m: float = param(50e-6, "one image pixel on the surface", lo=1e-7, hi=1e-2, unit="m")
    focal_px: float = param(2000.0, "focal length (sets the camera height = focal * pixel size)",
                            lo=100.0, hi=1e5, unit="px")
    supersample: int = param(4, "texels per image pixel of the mark's coverage texture", lo=1, hi=8)
    coaxial_half_angle_deg: float = param(10.0, "half angle of the coaxial light's aperture seen "
                                          "from the surface", lo=0.0, hi=60.0, unit="deg")
    ring_elevation_deg: float = param(30.0, "elevation of the ring lamps seen from the mark",
                                      lo=5.0, hi=85.0, unit="deg")
    ring_ambient: float = param(0.002, "ring light: radiance of the uniform surroundings (stray "
                                "light; a polished wafer mirrors it, so dark field is not black)",
                                lo=0.0, hi=10.0)
    exposure_level: float = param(0.8, "the 99.5th percentile of the first image maps to this "
                                  "(full scale 1); every image of a dataset uses that exposure",
                                  lo=0.05, hi=1.0)
    snr: float = param(0.0, "sensor noise added after rendering, as `generate marks --snr` "
                       "(0: Cycles' sampling noise only)", lo=0.0, hi=1e6)
    template_blur: float = param(0.5, "Gaussian sigma of the golden template's blur (Cycles' "
                                 "1.5 px Blackman-Harris pixel filter)", lo=0.0, hi=50.0, unit="px")
    timeout_s: float = param(3600.0, "time limit of the BlenderProc run", lo=1.0, hi=1e6, unit="s")


def mark_poses(n: int, seed: int, max_shift: float, max_angle: float, max_scale_error: float = 0.0):
    """The placements of :func:`~weak_template_ros.twin.marks.write_mark_dataset` (same seed, same
    poses): image ``i`` draws from ``np.random.default_rng([seed, i])``. Returns (poses, rngs)."""
    from weak_template_ros.align.similarity import Similarity

    poses, rngs = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        poses.append(Similarity(rng.uniform(-max_shift, max_shift), rng.uniform(-max_shift, max_shift),
                                rng.uniform(-max_angle, max_angle),
                                1.0 + rng.uniform(-max_scale_error, max_scale_error)))
        rngs.append(rng)
    return poses, rngs


def build_mark_job(spec, shape: tuple[int, int], poses: list, cfg: MarkRenderConfig, work_dir: Path,
                   seed: int = 0) -> dict:
    """The job of ``sim/mark_scene.py``: the mark twin's exact coverage as a texture on the surface
    plane, the camera straight above it, one wafer (stage) pose per image.

    A similarity ``(tx, ty, theta)`` in image pixels is the stage moving the wafer by
    ``(tx, -ty) * pixel_size`` metres (the camera's y points down, the world's up) and turning it
    by ``+theta`` about the optical axis (on-screen counter-clockwise, see
    :mod:`weak_template_ros.align.similarity`).
    """
    from weak_template_ros.align.similarity import Similarity
    from weak_template_ros.twin.marks import coverage, mark_geometry, place

    validate(cfg)
    H, W = int(shape[0]), int(shape[1])
    k = cfg.supersample
    p = cfg.pixel_size_m
    n_tex = int(math.ceil(spec.size * 1.1 + 8)) * k  # the mark and a bare border (EXTEND beyond)
    cov = coverage(place(mark_geometry(spec), Similarity(scale=k), ((n_tex - 1) / 2, (n_tex - 1) / 2)),
                   (n_tex, n_tex))
    work_dir.mkdir(parents=True, exist_ok=True)
    tex_path = work_dir / "mark_coverage.npz"
    np.savez(tex_path, coverage=cov.astype(np.float32))
    height = cfg.focal_px * p
    K = [cfg.focal_px, 0.0, (W - 1) / 2, 0.0, cfg.focal_px, (H - 1) / 2, 0.0, 0.0, 1.0]
    background, mark = MARK_SURFACES[cfg.surface]
    if cfg.light == "coaxial":
        # The mirror image of the field (2.05 fields wide at the lamp) plus the illumination
        # aperture: rough features catch light from within +-coaxial_half_angle_deg.
        size = 2.05 * max(W, H) * p + 2.0 * 1.05 * height * math.tan(math.radians(cfg.coaxial_half_angle_deg))
        # Energy only sets the exposure scale (images are normalised): about unit radiance.
        light = {"kind": "coaxial", "size_m": size, "energy": 10.0 * size ** 2 * math.pi}
    else:
        field = max(W, H) * p
        radius = 2.0 * field
        light = {"kind": "ring", "count": 12, "radius_m": radius,
                 "height_m": radius * math.tan(math.radians(cfg.ring_elevation_deg)),
                 "energy": 40.0 * radius ** 2, "lamp_radius_m": 0.1 * field}
    return {
        "format": MARK_JOB_FORMAT,
        "camera": {"K": K, "width": W, "height": H, "height_m": height, "clip_start": 0.1 * height,
                   "clip_end": 10.0 * height},
        "render": {"samples": cfg.samples, "denoiser": None, "noise_threshold": 0.0,
                   "filter_width_px": 1.5, "threads": 0, "max_bounces": 3,
                   "seed": int(np.random.default_rng([seed, 3]).integers(2**31 - 1))},
        "texture": {"path": str(tex_path.resolve()), "pitch_m": p / k},
        "surface": {"background": background, "mark": mark, "half_size_m": 2.0 * max(W, H) * p},
        "light": light,
        "world": {"color": [0.0 if cfg.light == "coaxial" else cfg.ring_ambient] * 3, "strength": 1.0},
        "frames": [{"location": [pose.tx * p, -pose.ty * p, 0.0], "angle": pose.theta} for pose in poses],
    }


def mark_levels(gray: np.ndarray, spec, pose) -> tuple[float, float]:
    """(background, mark) levels of an image: medians over fully bare pixels inside the mark's
    bounding square and over fully covered pixels (the twin's exact coverage at ``pose``)."""
    from weak_template_ros.twin.marks import coverage, mark_geometry, place

    H, W = gray.shape
    centre = ((W - 1) / 2, (H - 1) / 2)
    cov = coverage(place(mark_geometry(spec), pose, centre), (H, W))
    y, x = np.mgrid[0:H, 0:W]
    half = spec.size / 2
    near = (np.abs(x - centre[0] - pose.tx) < half) & (np.abs(y - centre[1] - pose.ty) < half)
    bare, covered = gray[near & (cov == 0)], gray[cov >= 1.0 - 1e-9]
    if bare.size == 0 or covered.size == 0:
        raise InputError("mark", "a mark with both bare and fully covered pixels", f"{spec.kind} at {pose}")
    return float(np.median(bare)), float(np.median(covered))


def write_mark_dataset_blenderproc(out: str | Path, n: int, spec, shape: tuple[int, int] = (256, 256),
                                   seed: int = 0, max_shift: float = 10.0,
                                   max_angle: float = math.radians(5.0),
                                   cfg: MarkRenderConfig | None = None, env: BlenderProcEnv | None = None,
                                   keep_work: bool = False) -> dict:
    """Mark images rendered by BlenderProc, written as
    :func:`~weak_template_ros.twin.marks.write_mark_dataset` writes the twin's: ``template.png``,
    ``NNNNNN.png`` (16-bit, full scale 65535) and ``ground_truth.json`` with the same poses for the
    same seed.

    The images are the luminance of Cycles' linear radiance at one exposure per dataset (see
    :class:`MarkRenderConfig`), plus the twin's sensor noise when ``cfg.snr > 0``. The golden
    template is the twin's design template (:func:`~weak_template_ros.twin.marks.golden_template`)
    with the polarity and contrast measured on the first image (the surface and light decide
    whether the mark looks bright or dark); ``ground_truth.json`` holds them in ``mark`` and
    ``degradations`` and the render settings in ``renderer``.
    """
    import cv2

    from weak_template_ros.twin.marks import (
        Degradations,
        MarkSpec,
        golden_template,
        make_scene,
        to_uint16,
        write_mark_images,
    )

    if n < 1:
        raise InputError("n", "at least 1 image", n)
    cfg = cfg or MarkRenderConfig()
    env = env or BlenderProcEnv.locate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    poses, rngs = mark_poses(n, seed, max_shift, max_angle)
    work = out / ".blenderproc_work"
    try:
        job = build_mark_job(spec, shape, poses, cfg, work, seed)
        raw = run_job(job, work, env, script="mark_scene.py", timeout_s=cfg.timeout_s)
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    gray = [np.asarray(r, np.float64) @ LUMINANCE for r in raw.radiance]
    exposure = cfg.exposure_level / max(float(np.percentile(gray[0], 99.5)), 1e-12)
    gray = [g * exposure for g in gray]
    bg, level = mark_levels(gray[0], spec, poses[0])
    polarity = 1 if level >= bg else -1
    step = abs(level - bg)
    seen = MarkSpec(**{**asdict(spec), "polarity": polarity})
    # The twin's design template with unit step, scaled to the measured levels: a dark-field
    # image (background ~0) has a contrast far beyond Degradations' range (<= 1).
    unit = golden_template(MarkSpec(**{**asdict(spec), "polarity": 1}), shape,
                           Degradations(background=1.0, contrast=1.0, defocus_sigma=cfg.template_blur))
    cv2.imwrite(str(out / "template.png"), to_uint16(bg + (level - bg) * (unit - 1.0)))
    background = float(np.clip(bg, 1e-3, 1.0))
    # Noise of the twin's model with SNR = step / sigma at the background (Degradations states
    # SNR through background * contrast: the same sigma with contrast 1 and a scaled snr).
    d = Degradations(background=background, contrast=min(step / background, 1.0),
                     snr=cfg.snr * background / max(step, 1e-12) if cfg.snr > 0 else 0.0,
                     defocus_sigma=cfg.template_blur)
    noise = make_scene(seen, shape, replace(d, contrast=1.0), rng=0) if cfg.snr > 0 else None
    def noisy():
        for img, pose, rng in zip(gray, poses, rngs, strict=True):
            if noise is not None:
                img = img + noise.noise_sigma(img) * rng.standard_normal(img.shape)
            yield img, pose

    renderer = {"backend": "blenderproc", **asdict(cfg), "exposure": exposure,
                "measured_background": bg, "measured_mark_level": level,
                "contrast": step / max(bg, 1e-12),
                "render_s": raw.result["timing"].get("colour_render_s"),
                "blenderproc_wall_s": raw.wall_s}
    return write_mark_images(out, noisy(), seen, {**asdict(d), "snr": cfg.snr}, shape, seed,
                             renderer=renderer)


def blenderproc_marks_cli(out: Path, n: int, spec, shape: tuple[int, int], seed: int, max_shift: float,
                          max_angle: float, backend: str, surface: str, light: str, samples: int,
                          snr: float) -> dict:
    """``weak-template generate marks --backend blenderproc``: checks the options and the
    environment (before writing anything) and renders; a BlenderProc failure ends the command
    with exit status 1 and the end of Blender's log."""
    from weak_template_ros.config import from_mapping

    if backend != "blenderproc":
        raise InputError("--backend", "'embedded' or 'blenderproc'", backend)
    cfg = from_mapping(MarkRenderConfig, {"surface": surface, "light": light, "samples": samples,
                                          "snr": snr}, source="blenderproc mark options")
    env = BlenderProcEnv.locate()
    try:
        return write_mark_dataset_blenderproc(out, n, spec, shape, seed, max_shift, max_angle, cfg, env)
    except BlenderProcError as e:
        raise SystemExit(f"error: {e}") from None
