"""Digital-twin scenes: parts resting on a table, distractors, controlled occlusion, varied light.

One scene = one arrangement of parts and distractors on a table; its frames are views from
camera poses on a hemisphere around the table centre. A frame can carry a controlled occluder: a
box standing on the table between the camera and the scene's first part, slid sideways until the
part's visible fraction matches the requested occlusion (bisection on a quarter-resolution
render). Every random choice is drawn from ``np.random.default_rng([seed, scene_id, ...])``, so
a scene does not depend on which other scenes were generated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose, look_at, make_pose, rotation_from_rotvec
from weak_template_ros.models import PART_FAMILIES, PartModel, make_part, stable_poses
from weak_template_ros.twin.bop import BopFrame, BopWriter, ObjectAnnotation
from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject, TablePlane
from weak_template_ros.twin.sensor import SensorModel


@dataclass
class SceneSpec:
    """What to generate. Distances in metres, angles in degrees (YAML/CLI friendly)."""

    width: int = param(640, "image width", lo=16, hi=8192, unit="px")
    height: int = param(480, "image height", lo=16, hi=8192, unit="px")
    fov_x_deg: float = param(60.0, "horizontal field of view", lo=5.0, hi=150.0, unit="deg")
    parts_per_scene: int = param(3, "distinct parts placed on the table per scene", lo=1, hi=50)
    distractors: int = param(3, "random distractor shapes per scene", lo=0, hi=50)
    frames_per_scene: int = param(5, "camera views per scene", lo=1, hi=10000)
    distance_min: float = param(0.45, "camera distance to the look-at point, min", lo=0.05, hi=20.0,
                                unit="m")
    distance_max: float = param(0.75, "camera distance to the look-at point, max", lo=0.05, hi=20.0,
                                unit="m")
    elevation_min_deg: float = param(35.0, "camera elevation above the table, min", lo=5.0, hi=90.0,
                                     unit="deg")
    elevation_max_deg: float = param(80.0, "camera elevation above the table, max", lo=5.0, hi=90.0,
                                     unit="deg")
    placement_radius: float = param(0.12, "parts and distractors are placed within this radius",
                                    lo=0.0, hi=10.0, unit="m")
    occlusion_min: float = param(0.0, "target occlusion of the first part, min (0: no occluder)",
                                 lo=0.0, hi=0.95)
    occlusion_max: float = param(0.0, "target occlusion of the first part, max", lo=0.0, hi=0.95)
    contrast: float = param(0.8, "part albedo relative to the table: part = table * (1 + contrast)",
                            lo=-0.95, hi=1.5)
    table_albedo: float = param(0.35, "table diffuse reflectance", lo=0.0, hi=1.0)
    specular: float = param(0.15, "Blinn-Phong strength of the parts", lo=0.0, hi=1.0)
    light_intensity_min: float = param(0.6, "directional light intensity, min", lo=0.0, hi=5.0)
    light_intensity_max: float = param(1.0, "directional light intensity, max", lo=0.0, hi=5.0)
    ambient_min: float = param(0.15, "ambient light, min", lo=0.0, hi=2.0)
    ambient_max: float = param(0.35, "ambient light, max", lo=0.0, hi=2.0)
    noise: bool = param(True, "apply the sensor model (False: exact images)")
    sensor: SensorModel = field(default_factory=SensorModel)

    def __post_init__(self):
        for lo, hi in (("distance_min", "distance_max"), ("elevation_min_deg", "elevation_max_deg"),
                       ("occlusion_min", "occlusion_max"), ("light_intensity_min", "light_intensity_max"),
                       ("ambient_min", "ambient_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise InputError(f"SceneSpec.{lo}", f"<= {hi} ({getattr(self, hi)})", getattr(self, lo))

    @property
    def camera(self) -> CameraIntrinsics:
        return CameraIntrinsics.from_fov(self.width, self.height, self.fov_x_deg)


@dataclass
class PlacedObject:
    """A mesh instance of a scene in the world (= table) frame; ``obj_id`` None for distractors
    and occluders (not annotated)."""

    key: object
    T_world_obj: np.ndarray
    albedo: float
    specular: float
    obj_id: int | None


@dataclass
class FrameLayout:
    """Everything random about one frame except sensor noise: camera, light, occluder.

    ``rng`` is the frame's generator after those draws; the sensor model continues with it, so
    every backend that renders this layout gets the same noise stream.
    """

    im_id: int
    T_world_cam: np.ndarray
    lighting: Lighting
    occluder: PlacedObject | None
    rng: np.random.Generator


def _distractor_mesh(rng: np.random.Generator) -> trimesh.Trimesh:
    kind = rng.integers(3)
    s = rng.uniform(0.02, 0.06, size=3)
    if kind == 0:
        return trimesh.creation.box(extents=s)
    if kind == 1:
        return trimesh.creation.cylinder(radius=s[0] / 2, height=s[1], sections=48)
    return trimesh.creation.icosphere(subdivisions=3, radius=s[0] / 2)


def _rest_on_table(mesh: trimesh.Trimesh, rng: np.random.Generator) -> np.ndarray:
    """Pose of a distractor lying on the table with a random yaw (boxes, upright cylinders and
    spheres as created by :func:`_distractor_mesh` rest stably on their lowest face)."""
    T = make_pose(rotation_from_rotvec([0, 0, rng.uniform(-math.pi, math.pi)]))
    T[2, 3] = -mesh.bounds[0, 2]
    return T


def _place_xy(placed_xy: list[tuple[np.ndarray, float]], radius: float, spec: SceneSpec,
              rng: np.random.Generator, what: str) -> np.ndarray:
    for _ in range(200):
        r = spec.placement_radius * math.sqrt(rng.uniform())
        a = rng.uniform(-math.pi, math.pi)
        xy = np.array([r * math.cos(a), r * math.sin(a)])
        if all(np.linalg.norm(xy - q) >= radius + rq + 0.005 for q, rq in placed_xy):
            placed_xy.append((xy, radius))
            return xy
    raise InputError(
        "SceneSpec.placement_radius",
        f"room for {spec.parts_per_scene} parts and {spec.distractors} distractors without overlap",
        f"no free spot for {what} (radius {radius:.3f} m) within {spec.placement_radius} m "
        f"after 200 tries in each of {ARRANGE_ATTEMPTS} arrangements",
    )


ARRANGE_ATTEMPTS = 20


def arrange_scene(models: dict[int, PartModel], spec: SceneSpec, seed: int, scene_id: int,
                  renderer: Renderer) -> list[PlacedObject]:
    """Parts (stable poses, random yaw, no overlap) and distractors on the table, world = table frame.

    Placement is greedy, so early objects can block later ones: the whole arrangement is redrawn
    (attempt k uses ``default_rng([seed, scene_id, 0, k])``, attempt 0 ``[seed, scene_id, 0]``)
    up to :data:`ARRANGE_ATTEMPTS` times before the last placement error is raised.
    """
    for attempt in range(ARRANGE_ATTEMPTS):
        key = [seed, scene_id, 0] + ([attempt] if attempt else [])
        try:
            return _arrange_once(models, spec, np.random.default_rng(key), scene_id, renderer)
        except InputError as e:
            if e.name != "SceneSpec.placement_radius" or attempt == ARRANGE_ATTEMPTS - 1:
                raise


def _arrange_once(models: dict[int, PartModel], spec: SceneSpec, rng: np.random.Generator, scene_id: int,
                  renderer: Renderer) -> list[PlacedObject]:
    ids = sorted(models)
    if spec.parts_per_scene > len(ids):
        raise InputError("SceneSpec.parts_per_scene", f"at most the number of models ({len(ids)})",
                         spec.parts_per_scene)
    chosen = rng.choice(ids, size=spec.parts_per_scene, replace=False)
    table_albedo = spec.table_albedo
    part_albedo = float(np.clip(table_albedo * (1.0 + spec.contrast), 0.0, 1.0))
    placed, xy_used = [], []
    for obj_id in chosen:
        obj_id = int(obj_id)
        model = models[obj_id]
        if not renderer.has_mesh(("obj", obj_id)):
            renderer.add_mesh(("obj", obj_id), model.mesh)
        poses = stable_poses(model)
        probs = np.array([p for _, p in poses], float)
        T = poses[rng.choice(len(poses), p=probs / probs.sum())][0]
        T = make_pose(rotation_from_rotvec([0, 0, rng.uniform(-math.pi, math.pi)])) @ T
        radius = _xy_radius(model.mesh, T)
        T[:2, 3] += _place_xy(xy_used, radius, spec, rng, f"obj_id {obj_id}")
        placed.append(PlacedObject(("obj", obj_id), T, part_albedo, spec.specular, obj_id))
    for k in range(spec.distractors):
        mesh = _distractor_mesh(rng)
        key = ("distractor", scene_id, k)
        renderer.add_mesh(key, mesh)
        T = _rest_on_table(mesh, rng)
        T[:2, 3] += _place_xy(xy_used, _xy_radius(mesh, T), spec, rng, f"distractor {k}")
        albedo = float(np.clip(table_albedo * (1.0 + rng.uniform(-0.5, 1.5)), 0.0, 1.0))
        placed.append(PlacedObject(key, T, albedo, float(rng.uniform(0, 0.3)), None))
    return placed


def _xy_radius(mesh: trimesh.Trimesh, T: np.ndarray) -> float:
    v = mesh.vertices @ T[:3, :3].T
    return float(np.max(np.linalg.norm(v[:, :2] - (v[:, :2].max(0) + v[:, :2].min(0)) / 2, axis=1)))


def sample_camera(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """``T_world_cam`` on the hemisphere around the table centre (distance, elevation from spec)."""
    d = rng.uniform(spec.distance_min, spec.distance_max)
    el = math.radians(rng.uniform(spec.elevation_min_deg, spec.elevation_max_deg))
    az = rng.uniform(-math.pi, math.pi)
    eye = d * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    target = np.array([*rng.normal(0.0, 0.01, 2), 0.0])
    return look_at(eye + target, target, up=(0.0, 0.0, 1.0))


def sample_lighting(spec: SceneSpec, rng: np.random.Generator) -> Lighting:
    """Directional light from the camera's side (towards the viewer hemisphere), random strength."""
    v = rng.normal(size=3)
    v[2] = -abs(v[2]) - 0.5  # point towards the camera (camera-frame -z side)
    return Lighting(direction=tuple(v / np.linalg.norm(v)),
                    intensity=float(rng.uniform(spec.light_intensity_min, spec.light_intensity_max)),
                    ambient=float(rng.uniform(spec.ambient_min, spec.ambient_max)))


def _objects_in_camera(placed: list[PlacedObject], T_cam_world: np.ndarray) -> list[SceneObject]:
    return [SceneObject(p.key, T_cam_world @ p.T_world_obj, albedo=p.albedo, specular=p.specular)
            for p in placed]


def _add_occluder(renderer: Renderer, lowres: Renderer, placed: list[PlacedObject], target: PlacedObject,
                  T_world_cam: np.ndarray, occlusion: float, key) -> PlacedObject:
    """A box standing between camera and target, slid sideways to hide ``occlusion`` of it."""
    model_v = target_mesh_vertices(renderer, target)
    top = float(model_v[:, 2].max())
    centre = (model_v.max(0) + model_v.min(0)) / 2
    r_xy = float(np.max(np.linalg.norm(model_v[:, :2] - centre[:2], axis=1)))
    cam = T_world_cam[:3, 3]
    to_cam = cam[:2] - centre[:2]
    horiz = float(np.linalg.norm(to_cam))
    u = to_cam / max(horiz, 1e-9)
    w = np.array([-u[1], u[0]])
    depth = 0.01
    gap = r_xy + depth / 2 + 0.01
    tan_el = (cam[2] - top) / max(horiz, 1e-9)
    height = 1.15 * (top + gap * tan_el) + 0.01
    width = 2.6 * r_xy + 0.02
    box = trimesh.creation.box(extents=(width, depth, height))
    renderer.add_mesh(key, box)
    lowres.add_mesh(key, box)
    yaw = math.atan2(u[1], u[0]) + math.pi / 2  # box's x axis along w (across the line of sight)

    def pose(s: float) -> np.ndarray:
        T = make_pose(rotation_from_rotvec([0, 0, yaw]))
        T[:2, 3] = centre[:2] + gap * u + s * w
        T[2, 3] = height / 2
        return T

    T_cam_world = invert_pose(T_world_cam)
    objs = _objects_in_camera([target], T_cam_world)
    full = lowres.cast_object(target.key, objs[0].T_cam_obj)[0] > 0
    n_full = max(int(full.sum()), 1)

    def occluded(s: float) -> float:
        d_occ = lowres.cast_object(key, T_cam_world @ pose(s))[0]
        d_t = lowres.cast_object(target.key, objs[0].T_cam_obj)[0]
        hidden = full & (d_occ > 0) & (d_occ < d_t)
        return hidden.sum() / n_full

    lo, hi = 0.0, width / 2 + r_xy  # occlusion(lo) is the largest, occlusion(hi) ~ 0
    for _ in range(12):
        mid = (lo + hi) / 2
        if occluded(mid) > occlusion:
            lo = mid
        else:
            hi = mid
    return PlacedObject(key, pose((lo + hi) / 2), target.albedo, target.specular, None)


def target_mesh_vertices(renderer: Renderer, placed: PlacedObject) -> np.ndarray:
    """World-frame vertices of a placed mesh (from the renderer's registry)."""
    v = renderer.mesh_vertices(placed.key)
    return v @ placed.T_world_obj[:3, :3].T + placed.T_world_obj[:3, 3]


def iter_frame_layouts(spec: SceneSpec, seed: int, scene_id: int, placed: list[PlacedObject],
                       renderer: Renderer, lowres: Renderer) -> Iterator[FrameLayout]:
    """The frames' cameras, lights and occluders, in the one order every backend draws them.

    An occluder's mesh is added to ``renderer`` and ``lowres`` under ``("occluder", scene_id,
    im_id)``; the caller removes it when done with the frame.
    """
    for im_id in range(spec.frames_per_scene):
        rng = np.random.default_rng([seed, scene_id, 1, im_id])
        T_world_cam = sample_camera(spec, rng)
        lighting = sample_lighting(spec, rng)
        occluder = None
        if spec.occlusion_max > 0:
            occ = rng.uniform(spec.occlusion_min, spec.occlusion_max)
            occluder = _add_occluder(renderer, lowres, placed, placed[0], T_world_cam, occ,
                                     ("occluder", scene_id, im_id))
        yield FrameLayout(im_id, T_world_cam, lighting, occluder, rng)


def scene_renderers(camera: CameraIntrinsics, renderer: Renderer | None = None):
    """(full-size, quarter-size for occlusion bisection, 3x-canvas for BOP's px_count_all) renderers."""
    renderer = renderer or Renderer(camera)
    lowres = Renderer(camera.scaled(0.25))
    ext = CameraIntrinsics(camera.fx, camera.fy, camera.cx + camera.width, camera.cy + camera.height,
                           3 * camera.width, 3 * camera.height)
    return renderer, lowres, Renderer(ext)


def share_meshes(source: Renderer, placed: list[PlacedObject], *targets: Renderer) -> None:
    """Register the placed objects' meshes of ``source`` in the other renderers."""
    for p in placed:
        for r in targets:
            if not r.has_mesh(p.key):
                r.add_mesh(p.key, source.mesh(p.key))


def iter_scene_frames(models: dict[int, PartModel], spec: SceneSpec, seed: int, scene_id: int,
                      renderer: Renderer | None = None) -> Iterator[BopFrame]:
    """Frames of one scene, with ground truth for every part (distractors are unannotated)."""
    validate(spec)
    camera = spec.camera
    renderer, lowres, ext_renderer = scene_renderers(camera, renderer)
    placed = arrange_scene(models, spec, seed, scene_id, renderer)
    share_meshes(renderer, placed, lowres, ext_renderer)
    table = TablePlane(np.eye(4), albedo=spec.table_albedo, half_size=None)
    for lay in iter_frame_layouts(spec, seed, scene_id, placed, renderer, lowres):
        T_cam_world = invert_pose(lay.T_world_cam)
        frame_objects = placed + ([lay.occluder] if lay.occluder is not None else [])
        objs = _objects_in_camera(frame_objects, T_cam_world)
        out = renderer.render(objs, table=TablePlane(T_cam_world @ table.T_cam_table, table.albedo),
                              lighting=lay.lighting, sensor=spec.sensor if spec.noise else None,
                              rng=lay.rng)
        annotations = annotate_frame(out, frame_objects, objs, ext_renderer)
        if lay.occluder is not None:
            for r in (renderer, lowres):
                r.remove_mesh(lay.occluder.key)
        yield BopFrame(rgb=out.rgb, depth=out.depth, camera=camera, objects=annotations,
                       T_cam_world=T_cam_world, scene_id=scene_id, im_id=lay.im_id)


def annotate_frame(out, frame_objects: list[PlacedObject], objs: list, ext_renderer: Renderer
                   ) -> list[ObjectAnnotation]:
    """BOP annotations of the parts of a rendered frame (distractors and occluders skipped):
    pose, full and visible masks, and for parts cut by the image border BOP's ``px_count_all``
    and ``bbox_obj`` from ``ext_renderer`` (the 3x canvas of :func:`scene_renderers`).

    ``out`` is the frame's render (``masks_full``, ``instance`` indexed like ``frame_objects``),
    ``objs`` the SceneObjects it rendered (camera-frame poses).
    """
    camera = ext_renderer.camera
    width, height = camera.width // 3, camera.height // 3
    annotations = []
    for i, p in enumerate(frame_objects):
        if p.obj_id is None:
            continue
        mask = out.masks_full[i]
        px_all, bbox = None, None
        if _touches_border(mask):
            full_ext = ext_renderer.cast_object(p.key, objs[i].T_cam_obj)[0] > 0
            px_all = int(full_ext.sum())
            ys, xs = np.nonzero(full_ext)
            if len(xs):
                bbox = (int(xs.min()) - width, int(ys.min()) - height,
                        int(xs.max() - xs.min()), int(ys.max() - ys.min()))
        annotations.append(ObjectAnnotation(obj_id=p.obj_id, T_cam_obj=objs[i].T_cam_obj,
                                            mask=mask, mask_visib=out.instance == i,
                                            px_count_all=px_all, bbox_obj=bbox))
    return annotations


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def generate_dataset(out_dir: str | Path, models: dict[int, PartModel], spec: SceneSpec, n_scenes: int,
                     seed: int = 0, split: str = "test", first_scene: int = 0,
                     on_frame: Callable[[BopFrame], None] | None = None) -> Path:
    """Render ``n_scenes`` scenes into a BOP dataset at ``out_dir`` (models, camera, split)."""
    out_dir = Path(out_dir)
    camera = spec.camera
    renderer = Renderer(camera)
    with BopWriter(out_dir, split=split) as writer:
        writer.write_camera(camera, depth_scale=0.1)
        writer.write_models(models)
        for scene_id in range(first_scene, first_scene + n_scenes):
            for frame in iter_scene_frames(models, spec, seed, scene_id, renderer):
                writer.write_frame(scene_id, frame.im_id, frame)
                if on_frame is not None:
                    on_frame(frame)
            renderer.remove_meshes(lambda k: isinstance(k, tuple) and k[0] == "distractor")
    return out_dir


def make_part_set(families: list[str] | tuple[str, ...] = ("all",), seed: int = 0,
                  per_family: int = 1) -> dict[int, PartModel]:
    """Procedural parts keyed by BOP obj_id (1, 2, ... in family order).

    ``families`` may contain "all" (every family in :data:`~weak_template_ros.models.PART_FAMILIES`).
    Part k of a family uses seed ``seed + k``.
    """
    names = list(PART_FAMILIES) if "all" in families else list(families)
    for f in names:
        if f not in PART_FAMILIES:
            raise InputError("family", f"one of {sorted(PART_FAMILIES)} or 'all'", repr(f))
    models, obj_id = {}, 1
    for f in names:
        for k in range(per_family):
            models[obj_id] = make_part(f, seed=seed + k)
            obj_id += 1
    return models
