"""Helpers shared by the BlenderProc scripts of sim/ (imported after ``import blenderproc``).

Conventions are the project's: metres, 4x4 poses, OpenCV camera frame (x right, y down, z
forward; integer pixel coordinates are pixel centres), depth = z in metres with 0 = invalid.

What a script writes into its output folder (read by ``weak_template_ros/twin/blenderproc.py``):

    frame_{k:06d}.npz   radiance (H, W, 3) float32, linear scene radiance (EXR, no view transform)
                        depth (H, W) float32, z in metres, 0 where nothing is hit
                        instance (H, W) int16, index of the job object seen first, -1 for none
    result.json         {"format", "frames", "objects": [{"name", "T_world_obj"}], "timing", ...}

Depth and instance come from one pixel-centred sample (Cycles writes these passes from
the first sample only; a pixel filter narrower than 0.01 px puts it on the pixel centre), so they
match an exact ray caster; when the colour render is anti-aliased they come from a second,
one-sample render.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import blenderproc as bproc
import bpy
import numpy as np

RESULT_FORMAT = "weak_template_ros.blenderproc_result/1"
JOB_FORMAT = "weak_template_ros.blenderproc_job/1"
# Cycles' smallest pixel filter: the first sample lands within 0.005 px of the pixel centre.
PIXEL_CENTRE_FILTER_PX = 0.01
# OpenCV camera (x right, y down, z forward) -> Blender camera (x right, y up, looks along -z).
OPENCV_TO_BLENDER = ["X", "-Y", "-Z"]


class _EnglishOnlyView:
    """``preferences.view`` as ``bproc.init()`` expects it: PyPI's bpy is built without
    translations (its language enum offers only DEFAULT), so init's ``language = "en_US"`` fails."""

    language = "en_US"


class _Forward:
    """Forward every attribute to ``target`` except those given as keyword arguments."""

    def __init__(self, target, **overrides):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_target"), name)

    def __setattr__(self, name, value):
        if name not in object.__getattribute__(self, "_overrides"):
            setattr(object.__getattribute__(self, "_target"), name, value)


def init() -> None:
    """``bproc.init()`` with the language step made harmless (English is all this bpy has)."""
    from blenderproc.python.utility import Initializer

    real = Initializer.bpy
    prefs = _Forward(real.context.preferences, view=_EnglishOnlyView())
    Initializer.bpy = _Forward(real, context=_Forward(real.context, preferences=prefs))
    try:
        bproc.init()
    finally:
        Initializer.bpy = real


def read_job(argv: list[str] | None = None, formats: tuple[str, ...] = (JOB_FORMAT,)) -> tuple[dict, Path]:
    """The job JSON named on the command line and the output folder (created)."""
    argv = sys.argv if argv is None else argv
    if len(argv) != 3:
        raise SystemExit(f"usage: blenderproc run {argv[0]} JOB.json OUT_DIR")
    job = json.loads(Path(argv[1]).read_text())
    if job.get("format") not in formats:
        raise SystemExit(f"{argv[1]}: expected a job of format {' or '.join(formats)}, "
                         f"got {job.get('format')!r}")
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    return job, out


def configure_render(cfg: dict) -> None:
    """Cycles settings, every one explicit (BlenderProc's defaults are 1024 samples + denoiser)."""
    bproc.renderer.set_max_amount_of_samples(int(cfg["samples"]))
    bproc.renderer.set_noise_threshold(float(cfg.get("noise_threshold", 0.0)))
    denoiser = cfg.get("denoiser")
    bproc.renderer.set_denoiser(None if denoiser in (None, "NONE") else denoiser)
    bproc.renderer.set_cpu_threads(int(cfg.get("threads", 0)))
    bounces = int(cfg.get("max_bounces", 3))
    bproc.renderer.set_light_bounces(diffuse_bounces=bounces, glossy_bounces=bounces,
                                     ao_bounces_render=bounces, max_bounces=bounces,
                                     transmission_bounces=0, transparent_max_bounces=0, volume_bounces=0)
    bpy.context.scene.cycles.filter_width = max(float(cfg.get("filter_width_px", 1.5)),
                                                PIXEL_CENTRE_FILTER_PX)
    bpy.context.scene.cycles.seed = int(cfg.get("seed", 0))
    # Adaptive sampling stops converged pixels early; its minimum keeps the noise estimate sound.
    bpy.context.scene.cycles.adaptive_min_samples = int(cfg.get("adaptive_min_samples", 0))
    caustics = bool(cfg.get("caustics", True))
    bpy.context.scene.cycles.caustics_reflective = caustics
    bpy.context.scene.cycles.caustics_refractive = caustics
    if cfg.get("tile_size"):
        bpy.context.scene.cycles.use_auto_tile = True
        bpy.context.scene.cycles.tile_size = int(cfg["tile_size"])
    if "persistent_data" in cfg:
        bpy.context.scene.render.use_persistent_data = bool(cfg["persistent_data"])
    # Linear radiance in float EXR: the project's sensor model turns it into 8-bit images.
    bproc.renderer.set_output_format(file_format="OPEN_EXR", color_depth=32, enable_transparency=False,
                                     view_transform="Standard")
    bpy.context.scene.view_settings.look = "None"


def set_camera(cam: dict, poses_world_cam: list) -> None:
    """Intrinsics from K and one keyframe per OpenCV ``T_world_cam``."""
    K = np.asarray(cam["K"], float).reshape(3, 3)
    bproc.camera.set_intrinsics_from_K_matrix(K, int(cam["width"]), int(cam["height"]),
                                              clip_start=float(cam.get("clip_start", 0.01)),
                                              clip_end=float(cam.get("clip_end", 100.0)))
    for k, T in enumerate(poses_world_cam):
        T_bl = bproc.math.change_source_coordinate_frame_of_transformation_matrix(
            np.asarray(T, float), OPENCV_TO_BLENDER)
        bproc.camera.add_camera_pose(T_bl, frame=k)


def mesh_object(name: str, vertices: np.ndarray, faces: np.ndarray, smooth_angle_deg: float | None = None):
    """A MeshObject from vertices (N, 3) in metres and triangles (M, 3), built without importers
    (no axis or unit conversion can creep in)."""
    vertices = np.ascontiguousarray(vertices, np.float32)
    faces = np.ascontiguousarray(faces, np.int32)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.polygons.foreach_set("loop_total", np.full(len(faces), 3, np.int32))
    mesh.update()
    mesh.validate()
    obj = bproc.object.create_from_blender_mesh(mesh, name)
    # Blender >= 4.1 shades a new mesh smooth unless told otherwise: say it either way.
    if smooth_angle_deg:
        obj.set_shading_mode("AUTO", smooth_angle_deg)
    else:
        obj.set_shading_mode("FLAT")
    return obj


def load_mesh_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        return z["vertices"], z["faces"]


def principled_values(m: dict) -> dict:
    """Principled BSDF inputs from a dict of plain values (colours linear RGB in [0, 1])."""
    return {"Base Color": [*m.get("base_color", [0.5, 0.5, 0.5]), 1.0],
            "Metallic": m.get("metallic", 0.0), "Roughness": m.get("roughness", 0.5),
            "IOR": m.get("ior", 1.5), "Anisotropic": m.get("anisotropic", 0.0),
            "Coat Weight": m.get("coat", 0.0), "Coat Roughness": m.get("coat_roughness", 0.03),
            "Coat Tint": [*m.get("coat_tint", [1.0, 1.0, 1.0]), 1.0],
            "Specular IOR Level": m.get("specular", 0.5)}


def principled_material(name: str, m: dict):
    """A Principled BSDF material from a dict of plain values (colours linear RGB in [0, 1])."""
    mat = bproc.material.create(name)
    for key, value in principled_values(m).items():
        mat.set_principled_shader_value(key, value)
    return mat


def keyframe_visibility(blender_obj, frames: list[int] | None, n_frames: int) -> None:
    """Render ``blender_obj`` only on ``frames`` (None: on every frame)."""
    if frames is None:
        return
    present = set(int(f) for f in frames)
    for k in range(n_frames):
        blender_obj.hide_render = k not in present
        blender_obj.keyframe_insert(data_path="hide_render", frame=k)


def add_light(spec: dict, n_frames: int):
    """A light from ``{"type", "T_world_light" or "location", "energy", "color", "size", "frames"}``.

    SUN energy is irradiance (W/m^2): a Lambertian surface of albedo a facing it has radiance
    a * energy / pi. Lights shine along their -z axis.
    """
    light = bproc.types.Light(light_type=spec.get("type", "POINT"), name=spec.get("name", "light"))
    if "T_world_light" in spec:
        T = np.asarray(spec["T_world_light"], float)
        light.set_location(T[:3, 3])
        light.set_rotation_mat(T[:3, :3])
    else:
        light.set_location(spec.get("location", [0.0, 0.0, 2.0]))
    light.set_energy(float(spec.get("energy", 10.0)))
    light.set_color(spec.get("color", [1.0, 1.0, 1.0]))
    if "size" in spec:
        light.blender_obj.data.shadow_soft_size = float(spec["size"])
    if spec.get("angle_deg") is not None and light.blender_obj.data.type == "SUN":
        light.blender_obj.data.angle = np.radians(float(spec["angle_deg"]))
    if spec.get("spot_size_deg") is not None and light.blender_obj.data.type == "SPOT":
        light.blender_obj.data.spot_size = np.radians(float(spec["spot_size_deg"]))
    keyframe_visibility(light.blender_obj, spec.get("frames"), n_frames)
    return light


def set_world(color, strength: float = 1.0) -> None:
    """Uniform environment light of radiance ``color * strength`` (no HDR image)."""
    bproc.renderer.set_world_background(list(color), strength=float(strength))


def build_scene(job: dict) -> tuple[list, list]:
    """Camera, meshes, materials, table, world and lights of a job; returns the annotated
    MeshObjects (job order) and all job objects."""
    n_frames = len(job["frames"])
    set_camera(job["camera"], [f["T_world_cam"] for f in job["frames"]])
    materials = {k: principled_material(k, m) for k, m in job.get("materials", {}).items()}
    meshes = {k: load_mesh_npz(p) for k, p in job["meshes"].items()}
    annotated, everything = [], []
    for spec in job["objects"]:
        v, f = meshes[spec["mesh"]]
        obj = mesh_object(spec["name"], v, f, spec.get("smooth_angle_deg"))
        obj.set_local2world_mat(np.asarray(spec["T_world_obj"], float))
        if spec.get("material") is not None:
            obj.replace_materials(materials[spec["material"]])
        keyframe_visibility(obj.blender_obj, spec.get("frames"), n_frames)
        everything.append(obj)
        if spec.get("annotated", True):
            annotated.append(obj)
    table = job.get("table")
    if table is not None:
        h = float(table["half_size"])
        v = np.array([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], float)
        plane = mesh_object("table", v, np.array([[0, 1, 2], [0, 2, 3]]))
        if table.get("material") is not None:
            plane.replace_materials(materials[table["material"]])
        everything.append(plane)
    world = job.get("world", {"color": [0.05, 0.05, 0.05], "strength": 1.0})
    set_world(world["color"], world.get("strength", 1.0))
    for light in job.get("lights", []):
        add_light(light, n_frames)
    return annotated, everything


def render_frames(objects: list, n_frames: int, render_cfg: dict) -> dict[str, list[np.ndarray]]:
    """Render every keyframe: linear radiance, and pixel-centred depth and instances (unless
    ``render_cfg["gt_pass"]`` is false: radiance only).

    ``objects`` are the MeshObjects whose first hit is reported in ``instance`` (their list index);
    any other mesh (table, distractors) reads -1.
    """
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 0, n_frames
    t0, c0 = time.perf_counter(), time.process_time()
    colour_is_exact = (int(render_cfg["samples"]) == 1
                       and float(render_cfg.get("filter_width_px", 1.5)) <= PIXEL_CENTRE_FILTER_PX)
    out: dict[str, list] = {}
    if not render_cfg.get("gt_pass", True):  # the driver takes depth and masks from elsewhere
        out["radiance"] = bproc.renderer.render(load_keys=set())["colors"]
        TIMING["colour_render_s"] = time.perf_counter() - t0
        TIMING["colour_render_cpu_s"] = time.process_time() - c0
        return out
    if not colour_is_exact:
        out["radiance"] = bproc.renderer.render(load_keys=set())["colors"]
        TIMING["colour_render_s"] = time.perf_counter() - t0
        TIMING["colour_render_cpu_s"] = time.process_time() - c0
        # The geometric passes: one sample on each pixel centre, nothing else to compute.
        bproc.renderer.set_max_amount_of_samples(1)
        bproc.renderer.set_denoiser(None)
        bproc.renderer.set_light_bounces(diffuse_bounces=0, glossy_bounces=0, ao_bounces_render=0,
                                         max_bounces=0, transmission_bounces=0, transparent_max_bounces=0,
                                         volume_bounces=0)
        bpy.context.scene.cycles.filter_width = PIXEL_CENTRE_FILTER_PX
    t1, c1 = time.perf_counter(), time.process_time()
    bproc.renderer.enable_depth_output(activate_antialiasing=False)
    bproc.renderer.enable_segmentation_output(map_by=["instance"])
    for mesh in bproc.object.get_all_mesh_objects():
        mesh.blender_obj.pass_index = 0
    for i, obj in enumerate(objects):
        obj.blender_obj.pass_index = i + 1  # 0 is background and unlisted meshes
    if "radiance" in out:  # colours of this render are not wanted
        data = bproc.renderer.render(file_prefix="gt_", output_key=None, load_keys={"depth", "segmap"})
    else:
        data = bproc.renderer.render(load_keys={"depth", "segmap"})
    # Wall time and CPU time of all the process's threads (the latter barely depends on load).
    TIMING["gt_render_s" if "radiance" in out else "colour_render_s"] = time.perf_counter() - t1
    TIMING["gt_render_cpu_s" if "radiance" in out else "colour_render_cpu_s"] = time.process_time() - c1
    if "radiance" not in out:
        out["radiance"] = data["colors"]
    clip_end = bpy.context.scene.camera.data.clip_end
    out["depth"] = [np.where((d > 0) & (d < clip_end), d, 0.0).astype(np.float32) for d in data["depth"]]
    out["instance"] = [(np.rint(s).astype(np.int32) - 1).astype(np.int16) for s in data["instance_segmaps"]]
    return out


def render_colour(n_frames: int) -> dict[str, list[np.ndarray]]:
    """Linear radiance of every keyframe, nothing else (no depth or instance pass)."""
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 0, n_frames
    t0, c0 = time.perf_counter(), time.process_time()
    radiance = bproc.renderer.render(load_keys=set())["colors"]
    TIMING["colour_render_s"] = time.perf_counter() - t0
    TIMING["colour_render_cpu_s"] = time.process_time() - c0
    return {"radiance": radiance}


TIMING: dict[str, float] = {}


def write_outputs(out_dir: Path, frames: dict[str, list[np.ndarray]], objects: list,
                  extra: dict | None = None) -> None:
    """Write ``frame_*.npz`` and ``result.json`` (last, so its presence means complete)."""
    n = len(frames["radiance"])
    for k in range(n):
        passes = {key: frames[key][k] for key in ("depth", "instance") if key in frames}
        np.savez(out_dir / f"frame_{k:06d}.npz",
                 radiance=np.asarray(frames["radiance"][k], np.float32)[..., :3], **passes)
    result = {"format": RESULT_FORMAT, "frames": n,
              "objects": [{"name": o.get_name(), "T_world_obj": o.get_local2world_mat().tolist()}
                          for o in objects],
              "timing": {k: round(v, 3) for k, v in TIMING.items()},
              "blender": bpy.app.version_string, "blenderproc": bproc.__version__,
              "threads": bpy.context.scene.render.threads, **(extra or {})}
    tmp = out_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, out_dir / "result.json")
