"""Twin renderer truth: depth on the model surface, masks = first hit, shading and sensor model."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import trimesh

from weak_template_ros.camera import CameraIntrinsics, backproject
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose, make_pose, random_rotation, transform_points
from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject, TablePlane
from weak_template_ros.twin.sensor import SensorModel

CAM = CameraIntrinsics(570.0, 575.0, 321.3, 238.7, 640, 480)


def _scene():
    meshes = {
        "box": trimesh.creation.box((0.08, 0.05, 0.04)),
        "cyl": trimesh.creation.cylinder(radius=0.03, height=0.07, sections=64),
        "ring": trimesh.creation.annulus(r_min=0.015, r_max=0.035, height=0.02, sections=64),
    }
    rng = np.random.default_rng(7)
    poses = {
        "box": make_pose(random_rotation(rng), [0.00, 0.00, 0.55]),
        "cyl": make_pose(random_rotation(rng), [0.03, 0.02, 0.47]),   # in front of the box, overlapping
        "ring": make_pose(random_rotation(rng), [-0.06, -0.03, 0.60]),
    }
    r = Renderer(CAM)
    for k, m in meshes.items():
        r.add_mesh(k, m)
    objs = [SceneObject(k, poses[k]) for k in meshes]
    table = TablePlane(make_pose(np.diag([1.0, -1.0, -1.0]), [0, 0, 0.7]))  # facing the camera
    return r, meshes, objs, table


def test_depth_lies_on_model_surface_within_half_a_millimetre():
    r, meshes, objs, table = _scene()
    out = r.render(objs, table=table)
    assert np.array_equal(out.depth, out.depth_exact)  # no sensor: exact
    for i, obj in enumerate(objs):
        vis = out.instance == i
        assert vis.sum() > 500, obj.key
        pts = transform_points(invert_pose(obj.T_cam_obj), backproject(out.depth, CAM, mask=vis))
        _, dist, _ = meshes[obj.key].nearest.on_surface(pts)
        assert dist.max() < 0.5e-3, (obj.key, dist.max())


def test_visible_masks_equal_first_hit_of_an_independent_raycast():
    """Cross-check against one Open3D scene holding all meshes posed in the camera frame."""
    r, meshes, objs, table = _scene()
    out = r.render(objs)
    scene = o3d.t.geometry.RaycastingScene()
    for obj in objs:
        m = meshes[obj.key].copy().apply_transform(obj.T_cam_obj)
        scene.add_triangles(o3d.core.Tensor(m.vertices.astype(np.float32)),
                            o3d.core.Tensor(m.faces.astype(np.uint32)))
    d = CAM.ray_directions().reshape(-1, 3)
    rays = np.concatenate([np.zeros_like(d), d], axis=1)
    hit = scene.cast_rays(o3d.core.Tensor(rays))
    gid = hit["geometry_ids"].numpy().astype(np.int64).reshape(CAM.shape)
    gid[gid == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
    # Pixels whose two nearest surfaces are within float noise may legitimately differ.
    ambiguous = np.zeros(CAM.shape, bool)
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            both = (out.object_depths[i] > 0) & (out.object_depths[j] > 0)
            ambiguous |= both & (np.abs(out.object_depths[i] - out.object_depths[j]) < 1e-5)
    assert (gid[~ambiguous] == out.instance[~ambiguous]).all()
    for i, vis in enumerate(out.masks_visib):
        assert (vis <= out.masks_full[i]).all()  # visible part of the full silhouette
    assert (out.masks_visib[0] != out.masks_full[0]).sum() > 100  # the cylinder occludes the box


def test_table_plane_depth_is_exact():
    T_cam_table = make_pose(np.diag([1.0, -1.0, -1.0]), [0, 0, 0.8])  # table faces the camera
    out = Renderer(CAM).render([], table=TablePlane(T_cam_table))
    assert np.allclose(out.depth, 0.8, atol=1e-6)
    assert np.allclose(out.normals, [0, 0, -1], atol=1e-6)


def test_normals_face_the_camera_and_shading_is_lambertian():
    mesh = trimesh.creation.box((0.2, 0.2, 0.01))
    r = Renderer(CAM)
    r.add_mesh(0, mesh)
    light = Lighting(direction=(0, 0, -1), intensity=0.6, ambient=0.2)
    out = r.render([SceneObject(0, make_pose(t=[0, 0, 0.5]), albedo=0.5)], lighting=light)
    centre = out.radiance[240, 320]
    # Face normal (0, 0, -1) is aligned with the light: albedo * (ambient + intensity).
    np.testing.assert_allclose(centre, 0.5 * (0.2 + 0.6), atol=1e-6)
    np.testing.assert_allclose(out.normals[240, 320], [0, 0, -1], atol=1e-6)


def test_sensor_model_is_seeded_and_degrades():
    r, meshes, objs, table = _scene()
    s = SensorModel()
    a = r.render(objs, table=table, sensor=s, rng=np.random.default_rng(3))
    b = r.render(objs, table=table, sensor=s, rng=np.random.default_rng(3))
    c = r.render(objs, table=table, sensor=s, rng=np.random.default_rng(4))
    assert a.rgb.tobytes() == b.rgb.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    assert a.rgb.tobytes() != c.rgb.tobytes()
    valid = (a.depth > 0) & (a.depth_exact > 0)
    err = (a.depth - a.depth_exact)[valid]
    z = a.depth_exact[valid]
    sigma = s.depth_sigma_base + s.depth_sigma_quadratic * z**2
    # Depth noise has the model's standard deviation (within 10 %, ~10^5 samples) and zero mean.
    assert np.std(err / sigma) == pytest.approx(1.0, rel=0.1)
    assert abs(np.mean(err)) < 1e-4
    # Depth edges and grazing surfaces are invalidated: fewer valid pixels than exact ones.
    assert valid.sum() < (a.depth_exact > 0).sum()


def test_unknown_mesh_key_and_bad_pose_are_named():
    r = Renderer(CAM)
    r.add_mesh("a", trimesh.creation.box((0.1, 0.1, 0.1)))
    with pytest.raises(InputError, match="SceneObject.key"):
        r.render([SceneObject("b", np.eye(4))])
    with pytest.raises(InputError, match=r"objects\[0\].T_cam_obj"):
        r.render([SceneObject("a", np.eye(4) * 2)])
    with pytest.raises(InputError, match="rng"):
        r.render([SceneObject("a", make_pose(t=[0, 0, 1]))], sensor=SensorModel())
