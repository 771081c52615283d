"""Embedded CPU renderer of the digital twin, on Open3D's ``RaycastingScene``.

Each mesh gets its own ray-casting scene (BVH) built once, in its object frame; a frame is
rendered by transforming the camera rays into each object's frame, casting them only inside the
object's projected bounding box, and keeping the nearest hit. The table is an analytic plane.
That gives, in one pass and exactly: z depth (metres), camera-frame face normals, full
(unoccluded) and visible instance masks, and a shaded image (Lambert + ambient + optional
Blinn-Phong specular lobe, per-object grey level or colour) that the sensor model then degrades.

Ray tracing rather than rasterisation keeps depth exact to float precision (the twin is the
ground truth of every accuracy figure) and needs no GPU or display.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import open3d as o3d
import trimesh

from weak_template_ros.camera import CameraIntrinsics, project
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import check_pose
from weak_template_ros.twin.sensor import SensorModel

Colour = float | tuple[float, float, float]


@dataclass
class SceneObject:
    """One mesh instance in a frame.

    Parameters
    ----------
    key : hashable
        Key of a mesh added with :meth:`Renderer.add_mesh`.
    T_cam_obj : (4, 4) array
        Object-to-camera pose, metres.
    albedo : float or (r, g, b)
        Diffuse reflectance in [0, 1].
    specular : float
        Strength of the Blinn-Phong lobe (0: matte).
    shininess : float
        Blinn-Phong exponent.
    """

    key: object
    T_cam_obj: np.ndarray
    albedo: Colour = 0.6
    specular: float = 0.0
    shininess: float = 40.0


@dataclass
class TablePlane:
    """The support plane z = 0 of the table frame (z up), optionally finite.

    ``T_cam_table`` maps table coordinates to the camera frame; ``half_size`` (metres) bounds
    the plane in x and y (None: infinite).
    """

    T_cam_table: np.ndarray
    albedo: Colour = 0.35
    half_size: float | None = None


@dataclass
class Lighting:
    """One directional light plus ambient light, in the camera frame.

    ``direction`` points from the surface towards the light. Background (no hit) radiance is
    ``background``.
    """

    direction: tuple[float, float, float] = (-0.3, -0.5, -0.8)
    intensity: float = 0.8
    ambient: float = 0.25
    background: float = 0.05


@dataclass
class RenderResult:
    """What one render produced (H, W from the camera).

    Attributes
    ----------
    rgb : (H, W, 3) uint8
        Shaded image after the sensor model (exact shading rounded to 8 bits when no sensor).
    depth : (H, W) float32
        z depth in metres after the sensor model, 0 = invalid.
    depth_exact : (H, W) float32
        Noise-free z depth of the nearest surface (objects and table), 0 = nothing hit.
    normals : (H, W, 3) float32
        Camera-frame unit normals of the visible surface facing the camera, 0 where none.
    instance : (H, W) int32
        Index into the rendered object list of the first hit, -1 for table/background.
    masks_full : list of (H, W) bool
        Unoccluded silhouette of each object (in the image).
    radiance : (H, W, 3) float32
        Noise-free linear radiance before the sensor model.
    """

    rgb: np.ndarray
    depth: np.ndarray
    depth_exact: np.ndarray
    normals: np.ndarray
    instance: np.ndarray
    masks_full: list[np.ndarray]
    radiance: np.ndarray
    object_depths: list[np.ndarray] = field(default_factory=list, repr=False)

    @property
    def masks_visib(self) -> list[np.ndarray]:
        """Visible part of each object: pixels where it is the first surface hit."""
        return [self.instance == i for i in range(len(self.masks_full))]


def _albedo_rgb(a: Colour) -> np.ndarray:
    rgb = np.broadcast_to(np.asarray(a, dtype=np.float32), (3,)).copy()
    if np.any(rgb < 0) or np.any(rgb > 1):
        raise InputError("albedo", "values in [0, 1]", rgb.tolist())
    return rgb


class Renderer:
    """Ray-casting renderer for one camera.

    Parameters
    ----------
    camera : CameraIntrinsics
        Image size and intrinsics of every render.

    Examples
    --------
    >>> r = Renderer(CameraIntrinsics.from_fov(640, 480, 60))
    >>> r.add_mesh("part", part.mesh)
    >>> out = r.render([SceneObject("part", T_cam_obj)])
    """

    def __init__(self, camera: CameraIntrinsics):
        self.camera = camera
        self._scenes: dict[object, o3d.t.geometry.RaycastingScene] = {}
        self._corners: dict[object, np.ndarray] = {}
        self._meshes: dict[object, trimesh.Trimesh] = {}
        self._dirs = camera.ray_directions()  # (H, W, 3), z = 1, so t_hit is the z depth
        self._view = -self._dirs / np.linalg.norm(self._dirs, axis=-1, keepdims=True)

    def add_mesh(self, key, mesh: trimesh.Trimesh) -> None:
        """Register a mesh (metres, object frame) under ``key``; builds its BVH once."""
        if len(mesh.faces) == 0:
            raise InputError(f"mesh {key!r}", "a mesh with faces", "0 faces")
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                            o3d.core.Tensor(np.asarray(mesh.faces, np.uint32)))
        self._scenes[key] = scene
        self._corners[key] = trimesh.bounds.corners(mesh.bounds)
        self._meshes[key] = mesh

    def has_mesh(self, key) -> bool:
        return key in self._scenes

    def mesh(self, key) -> trimesh.Trimesh:
        """The mesh registered under ``key``."""
        return self._meshes[key]

    def mesh_vertices(self, key) -> np.ndarray:
        """(N, 3) object-frame vertices of the mesh under ``key``, metres."""
        return np.asarray(self._meshes[key].vertices)

    def remove_mesh(self, key) -> None:
        """Forget the mesh under ``key`` (no error if absent)."""
        for d in (self._scenes, self._corners, self._meshes):
            d.pop(key, None)

    def remove_meshes(self, predicate) -> None:
        """Forget every mesh whose key satisfies ``predicate(key)``."""
        for key in [k for k in self._scenes if predicate(k)]:
            self.remove_mesh(key)

    def _roi(self, key, T: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixel rows/cols [v0, v1) x [u0, u1) that can see the object, None if none can."""
        c = self._corners[key] @ T[:3, :3].T + T[:3, 3]
        if np.all(c[:, 2] <= 0):
            return None
        H, W = self.camera.shape
        if np.any(c[:, 2] <= 1e-6):  # box straddles the camera plane: cast everywhere
            return 0, H, 0, W
        uv = project(c, self.camera)
        u0, v0 = np.floor(uv.min(0)).astype(int)
        u1, v1 = np.ceil(uv.max(0)).astype(int) + 1
        u0, v0, u1, v1 = max(u0, 0), max(v0, 0), min(u1, W), min(v1, H)
        if u0 >= u1 or v0 >= v1:
            return None
        return v0, v1, u0, u1

    def cast_object(self, key, T_cam_obj: np.ndarray):
        """Depth and camera-frame normals of one object alone.

        Returns
        -------
        depth : (H, W) float32, 0 where the object is not hit
        normals : (H, W, 3) float32, camera frame, facing the camera
        """
        H, W = self.camera.shape
        depth = np.zeros((H, W), np.float32)
        normals = np.zeros((H, W, 3), np.float32)
        roi = self._roi(key, T_cam_obj)
        if roi is None:
            return depth, normals
        v0, v1, u0, u1 = roi
        R = T_cam_obj[:3, :3].astype(np.float32)
        t = T_cam_obj[:3, 3].astype(np.float32)
        d_cam = self._dirs[v0:v1, u0:u1]
        rays = np.empty((*d_cam.shape[:2], 6), np.float32)
        rays[..., :3] = -R.T @ t            # camera centre in the object frame
        rays[..., 3:] = d_cam @ R           # (R^T d) for every pixel
        hit = self._scenes[key].cast_rays(o3d.core.Tensor(rays))
        z = hit["t_hit"].numpy()
        ok = np.isfinite(z)
        n = hit["primitive_normals"].numpy() @ R.T
        # Face the camera: seen from inside a thin wall the face normal points away.
        flip = np.einsum("hwc,hwc->hw", n, d_cam) > 0
        n[flip] *= -1
        depth[v0:v1, u0:u1] = np.where(ok, z, 0.0)
        normals[v0:v1, u0:u1] = np.where(ok[..., None], n, 0.0)
        return depth, normals

    def depth_at(self, key, T_cam_obj: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Depth of one object alone at some pixels: ``cast_object(key, T)[0][v, u]`` with only
        those rays cast (a z-buffer test of a few thousand points needs no full render).

        Parameters
        ----------
        u, v : (N,) int arrays
            Pixel columns and rows inside the image.

        Returns
        -------
        (N,) float32, metres, 0 where the object is not hit
        """
        R = T_cam_obj[:3, :3].astype(np.float32)
        t = T_cam_obj[:3, 3].astype(np.float32)
        rays = np.empty((len(u), 6), np.float32)
        rays[:, :3] = -R.T @ t
        rays[:, 3:] = self._dirs[v, u] @ R
        z = self._scenes[key].cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        return np.where(np.isfinite(z), z, np.float32(0.0))

    def render(self, objects: list[SceneObject], table: TablePlane | None = None,
               lighting: Lighting | None = None, sensor: SensorModel | None = None,
               rng: np.random.Generator | None = None) -> RenderResult:
        """Render objects (and optionally a table) with shading and an optional sensor model.

        Parameters
        ----------
        objects : list of SceneObject
        table : TablePlane, optional
        lighting : Lighting, optional
            Default :class:`Lighting` when None.
        sensor : SensorModel, optional
            None gives the exact (noise-free) images; then ``depth == depth_exact``.
        rng : np.random.Generator, optional
            Needed when ``sensor`` is given.
        """
        cam = self.camera
        H, W = cam.shape
        lighting = lighting or Lighting()
        L = np.asarray(lighting.direction, np.float32)
        L = L / np.linalg.norm(L)
        ambient, intensity = np.float32(lighting.ambient), np.float32(lighting.intensity)
        nearest = np.full((H, W), np.inf, np.float32)
        instance = np.full((H, W), -1, np.int32)
        radiance = np.empty((H, W, 3), np.float32)
        radiance[:] = np.float32(lighting.background)

        if table is not None:
            T = check_pose(table.T_cam_table, "table.T_cam_table")
            n = T[:3, 2].astype(np.float32)
            n = n if n @ T[:3, 3] < 0 else -n  # face the camera (camera centre is the origin)
            with np.errstate(divide="ignore", invalid="ignore"):
                z = np.float32(n @ T[:3, 3]) / (self._dirs @ n)
            table_hit = np.isfinite(z) & (z > 0)
            if table.half_size is not None:
                p = self._dirs * z[..., None] - T[:3, 3].astype(np.float32)
                local = p @ T[:3, :2].astype(np.float32)
                table_hit &= np.all(np.abs(local) <= table.half_size, axis=-1)
            nearest[table_hit] = z[table_hit]
            # Constant normal: the (matte) table's radiance is one colour.
            table_rgb = _albedo_rgb(table.albedo) * (ambient + intensity * max(float(n @ L), 0.0))
            radiance = np.where(table_hit[..., None], table_rgb, radiance)
            normals = table_hit[..., None] * n
        else:
            table_hit = np.zeros((H, W), bool)
            normals = np.zeros((H, W, 3), np.float32)

        masks_full, object_depths, materials = [], [], []
        for i, obj in enumerate(objects):
            if obj.key not in self._scenes:
                raise InputError("SceneObject.key", f"one of the added meshes {list(self._scenes)}",
                                 repr(obj.key))
            T = check_pose(obj.T_cam_obj, f"objects[{i}].T_cam_obj")
            d, nrm = self.cast_object(obj.key, T)
            hit = d > 0
            masks_full.append(hit)
            object_depths.append(d)
            front = hit & (d < nearest)
            nearest[front] = d[front]
            normals[front] = nrm[front]
            instance[front] = i
            materials.append((_albedo_rgb(obj.albedo), np.float32(obj.specular),
                              np.float32(obj.shininess)))

        anything = np.isfinite(nearest)
        depth = np.where(anything, nearest, np.float32(0.0))

        # Objects: Lambert + ambient + Blinn-Phong, evaluated on object pixels only.
        v_obj, u_obj = np.nonzero(instance >= 0)
        if len(v_obj):
            n_o = normals[v_obj, u_obj]
            view_o = self._view[v_obj, u_obj]
            inst = instance[v_obj, u_obj]
            albedo = np.stack([m[0] for m in materials])[inst]
            spec = np.array([m[1] for m in materials], np.float32)[inst]
            shin = np.array([m[2] for m in materials], np.float32)[inst]
            h = view_o + L
            h /= np.linalg.norm(h, axis=1, keepdims=True)
            ndotl = np.clip(n_o @ L, 0.0, None)
            ndoth = np.clip(np.einsum("nc,nc->n", n_o, h), 0.0, None)
            rad = albedo * (ambient + intensity * ndotl)[:, None]
            rad += (intensity * spec * ndoth**shin)[:, None]
            radiance[v_obj, u_obj] = rad

        if sensor is None:
            rgb = np.clip(radiance * 255.0 + 0.5, 0, 255).astype(np.uint8)
            depth_out = depth
        else:
            if rng is None:
                raise InputError("rng", "a np.random.Generator when a sensor model is given", None)
            rgb = sensor.apply_rgb(radiance, rng)
            cos_inc = np.abs(np.einsum("hwc,hwc->hw", normals, self._view))
            depth_out = sensor.apply_depth(depth, cos_inc, rng)
        return RenderResult(rgb=rgb, depth=depth_out, depth_exact=depth, normals=normals,
                            instance=instance, masks_full=masks_full, radiance=radiance,
                            object_depths=object_depths)


def render_object(mesh: trimesh.Trimesh, camera: CameraIntrinsics, T_cam_obj: np.ndarray,
                  albedo: Colour = 0.6, lighting: Lighting | None = None) -> RenderResult:
    """Noise-free render of one mesh alone (builds a BVH: for many views use a Renderer)."""
    r = Renderer(camera)
    r.add_mesh(0, mesh)
    return r.render([SceneObject(0, T_cam_obj, albedo=albedo)], lighting=lighting)
