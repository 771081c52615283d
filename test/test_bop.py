"""BOP writer/reader: exact round trip, datasets written by hand to the spec, errors, gt_info."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, random_rotation
from weak_template_ros.models import make_part
from weak_template_ros.twin.bop import (
    BopDataset,
    BopFrame,
    BopWriter,
    ObjectAnnotation,
    bbox_from_mask,
    compute_gt_info,
    depth_from_png_units,
    depth_to_png_units,
)

CAM = CameraIntrinsics(fx=572.4114, fy=573.57043, cx=325.2611, cy=242.04899, width=96, height=72)


def _disc(shape, cx, cy, r):
    v, u = np.mgrid[: shape[0], : shape[1]]
    return (u - cx) ** 2 + (v - cy) ** 2 <= r * r


def _make_frame(rng: np.random.Generator, n_objects: int, depth_scale: float) -> BopFrame:
    """A synthetic frame: random image, discs as silhouettes (later ones occlude earlier ones),
    a plane for depth with a few invalid pixels, random poses with non-round numbers."""
    H, W = CAM.shape
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    depth = (0.5 + 0.3 * rng.random((H, W))).astype(np.float32)
    depth[rng.random((H, W)) < 0.05] = 0.0
    depth[0, 0] = np.nan
    objects, occluder = [], np.zeros((H, W), bool)
    discs = [_disc((H, W), rng.uniform(10, W - 10), rng.uniform(10, H - 10), rng.uniform(5, 15))
             for _ in range(n_objects)]
    for i in range(n_objects):
        later = np.zeros((H, W), bool)
        for d in discs[i + 1:]:
            later |= d
        T = make_pose(random_rotation(rng), rng.uniform([-0.1, -0.1, 0.3], [0.1, 0.1, 0.9]))
        objects.append(ObjectAnnotation(obj_id=int(rng.integers(1, 4)), T_cam_obj=T,
                                        mask=discs[i], mask_visib=discs[i] & ~later))
        occluder |= discs[i]
    T_cam_world = make_pose(random_rotation(rng), rng.normal(size=3))
    return BopFrame(rgb=rgb, depth=depth, camera=CAM, objects=objects, depth_scale=depth_scale,
                    T_cam_world=T_cam_world)


def _expected_units(depth, depth_scale):
    d = np.nan_to_num(depth.astype(np.float64), nan=0.0)
    return np.where(d > 0, np.round(d * 1000.0 / depth_scale), 0).astype(np.uint16)


def _expected_info(obj, depth_units):
    """scene_gt_info record computed independently of the module, straight from the spec."""
    def bbox(m):
        ys, xs = np.nonzero(m)
        if xs.size == 0:
            return [-1, -1, -1, -1]
        return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]
    n_all = int(obj.mask.sum()) if obj.px_count_all is None else obj.px_count_all
    n_visib = int(obj.mask_visib.sum())
    return {
        "bbox_obj": (list(obj.bbox_obj) if obj.bbox_obj is not None else bbox(obj.mask))
        if n_visib else [-1, -1, -1, -1],
        "bbox_visib": bbox(obj.mask_visib),
        "px_count_all": n_all,
        "px_count_valid": int((obj.mask & (depth_units > 0)).sum()),
        "px_count_visib": n_visib,
        "visib_fract": n_visib / n_all if n_all else 0.0,
    }


def test_exact_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    frames = {(0, 0): _make_frame(rng, 3, 0.1), (0, 3): _make_frame(rng, 1, 0.1),
              (0, 1): _make_frame(rng, 0, 0.1), (5, 2): _make_frame(rng, 4, 0.25)}
    with BopWriter(tmp_path, split="test") as w:
        w.write_camera(CAM, depth_scale=0.1)
        for (scene_id, im_id), frame in frames.items():
            w.write_frame(scene_id, im_id, frame)

    ds = BopDataset(tmp_path)
    assert ds.camera == CAM and ds.depth_scale == 0.1 and ds.models_info == {}
    assert ds.splits() == ["test"]
    assert ds.scene_ids("test") == [0, 5]
    assert ds.im_ids("test", 0) == [0, 1, 3]
    assert ds.im_ids("test", 5) == [2]
    assert len(list(ds.iter_frames("test"))) == 4

    for (scene_id, im_id), f in frames.items():
        r = ds.load_frame("test", scene_id, im_id)
        assert (r.scene_id, r.im_id) == (scene_id, im_id)
        # scene_camera.json record, every field exactly
        T = f.T_cam_world
        assert r.raw_camera == {"cam_K": CAM.K.reshape(-1).tolist(), "depth_scale": f.depth_scale,
                                "cam_R_w2c": T[:3, :3].reshape(-1).tolist(),
                                "cam_t_w2c": (T[:3, 3] * 1000.0).tolist()}
        assert r.camera == CAM and r.depth_scale == f.depth_scale
        np.testing.assert_allclose(r.T_cam_world, T, rtol=0, atol=1e-15)
        # pixels: rgb lossless, depth identical after quantisation, masks identical
        assert r.rgb.dtype == np.uint8 and np.array_equal(r.rgb, f.rgb)
        units = _expected_units(f.depth, f.depth_scale)
        stored = cv2.imread(str(tmp_path / f"test/{scene_id:06d}/depth/{im_id:06d}.png"),
                            cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint16 and np.array_equal(stored, units)
        assert r.depth.dtype == np.float32
        assert np.array_equal(np.round(r.depth.astype(np.float64) * 1000 / f.depth_scale), units)
        # depth error bounded by half a quantisation step (depth_scale mm / 2) plus the float32
        # rounding of both images (one ulp each at <= 1 m)
        ok = units > 0
        tol = f.depth_scale / 2000 + 2 * np.spacing(np.float32(1.0))
        assert np.abs(r.depth[ok] - f.depth[ok]).max() <= tol
        assert len(r.objects) == len(f.objects)
        for gt_id, (o_w, o_r) in enumerate(zip(f.objects, r.objects, strict=True)):
            t = o_w.T_cam_obj[:3, 3]
            assert o_r.raw_gt == {"cam_R_m2c": o_w.T_cam_obj[:3, :3].reshape(-1).tolist(),
                                  "cam_t_m2c": (t * 1000.0).tolist(), "obj_id": o_w.obj_id}
            assert o_r.raw_info == _expected_info(o_w, units)
            assert o_r.obj_id == o_w.obj_id
            np.testing.assert_allclose(o_r.T_cam_obj, o_w.T_cam_obj, rtol=0, atol=1e-15)
            assert o_r.mask.dtype == bool and np.array_equal(o_r.mask, o_w.mask)
            assert np.array_equal(o_r.mask_visib, o_w.mask_visib)
            m = cv2.imread(str(tmp_path / f"test/{scene_id:06d}/mask_visib/"
                               f"{im_id:06d}_{gt_id:06d}.png"),
                           cv2.IMREAD_UNCHANGED)
            assert m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}

    # The JSON files are plain BOP JSON: every float written at full precision, ids sorted.
    text = (tmp_path / "test/000000/scene_gt.json").read_text()
    assert list(json.loads(text)) == ["0", "1", "3"]
    assert json.loads((tmp_path / "camera.json").read_text()) == {
        "cx": CAM.cx, "cy": CAM.cy, "depth_scale": 0.1, "fx": CAM.fx, "fy": CAM.fy,
        "height": 72, "width": 96}

    # Writing a read frame again reproduces the same records (px_count_all/bbox_obj carried).
    r = ds.load_frame("test", 0, 0)
    with BopWriter(tmp_path, split="test") as w:
        w.write_frame(0, 7, r)
    ds2 = BopDataset(tmp_path)
    assert ds2.im_ids("test", 0) == [0, 1, 3, 7]  # frames already on disk are kept
    r2 = ds2.load_frame("test", 0, 7)
    assert [o.raw_info for o in r2.objects] == [o.raw_info for o in r.objects]
    assert np.array_equal(r2.depth, r.depth) and np.array_equal(r2.rgb, r.rgb)


def test_rewritten_frame_drops_stale_masks(tmp_path):
    rng = np.random.default_rng(1)
    with BopWriter(tmp_path) as w:
        w.write_frame(0, 0, _make_frame(rng, 3, 0.1))
        w.write_frame(0, 0, _make_frame(rng, 1, 0.1))
    assert sorted(p.name for p in (tmp_path / "test/000000/mask").iterdir()) == [
        "000000_000000.png"]
    ds = BopDataset(tmp_path)  # camera.json was written from the first frame
    assert ds.camera == CAM and len(ds.load_frame("test", 0, 0).objects) == 1


def test_jpg_and_gray_frames(tmp_path):
    rng = np.random.default_rng(3)
    f = _make_frame(rng, 1, 0.1)
    f.rgb = np.full(f.rgb.shape, (200, 40, 10), np.uint8)  # flat colour: jpg keeps it closely
    with BopWriter(tmp_path, split="train_pbr", rgb_format="jpg") as w:
        w.write_frame(1, 0, f)
    r = BopDataset(tmp_path).load_frame("train_pbr", 1, 0)
    assert (tmp_path / "train_pbr/000001/rgb/000000.jpg").is_file()
    assert np.abs(r.rgb.astype(int) - (200, 40, 10)).max() <= 3

    g = _make_frame(rng, 1, 0.1)
    g.rgb = rng.integers(0, 256, CAM.shape, dtype=np.uint8)
    with BopWriter(tmp_path / "gray", split="test") as w:
        w.write_frame(0, 0, g)
    assert (tmp_path / "gray/test/000000/gray/000000.png").is_file()
    assert np.array_equal(BopDataset(tmp_path / "gray").load_frame("test", 0, 0).rgb, g.rgb)


def test_truncated_object_uses_callers_counts(tmp_path):
    """Silhouette partly outside the image: px_count_all and bbox_obj come from the caller's
    larger canvas (as calc_gt_info renders a 3x canvas); visib_fract = visib / all."""
    H, W = CAM.shape
    big = _disc((3 * H, 3 * W), W + 5, H + 30, 12)  # centre at image (5, 30): cut at the left
    mask = big[H:2 * H, W:2 * W]
    ys, xs = np.nonzero(big)
    bbox_obj = (int(xs.min()) - W, int(ys.min()) - H, int(np.ptp(xs)), int(np.ptp(ys)))
    assert bbox_obj[0] < 0
    visib = mask & (np.arange(H)[:, None] < 30)  # lower half occluded
    obj = ObjectAnnotation(1, make_pose(t=[0, 0, 0.5]), mask, visib,
                           px_count_all=np.int64(big.sum()), bbox_obj=np.array(bbox_obj))
    hidden = ObjectAnnotation(2, make_pose(t=[0, 0, 0.6]), mask, np.zeros_like(mask))
    depth = np.full(CAM.shape, 0.5, np.float32)
    depth[:, :3] = 0
    frame = BopFrame(np.zeros((H, W, 3), np.uint8), depth, CAM, [obj, hidden])
    with BopWriter(tmp_path) as w:
        w.write_frame(0, 0, frame)
    info = [o.raw_info for o in BopDataset(tmp_path).load_frame("test", 0, 0).objects]
    n_visib = int(visib.sum())
    assert info[0] == {
        "bbox_obj": list(bbox_obj), "bbox_visib": list(bbox_from_mask(visib)),
        "px_count_all": int(big.sum()), "px_count_valid": int(mask[:, 3:].sum()),
        "px_count_visib": n_visib, "visib_fract": n_visib / int(big.sum())}
    assert int(big.sum()) > int(mask.sum()) > n_visib > 0
    assert info[1]["bbox_obj"] == info[1]["bbox_visib"] == [-1, -1, -1, -1]
    assert info[1]["visib_fract"] == 0.0 and info[1]["px_count_all"] == int(mask.sum())


def test_bbox_has_no_plus_one():
    m = np.zeros((5, 6), bool)
    m[2, 3] = True
    assert bbox_from_mask(m) == (3, 2, 0, 0)
    m[4, 5] = True
    assert bbox_from_mask(m) == (3, 2, 2, 2)
    assert bbox_from_mask(np.zeros((3, 3), bool)) == (-1, -1, -1, -1)
    empty = ObjectAnnotation(1, np.eye(4), np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    assert compute_gt_info(empty, None)["visib_fract"] == 0.0


def _write_hand_dataset(root: Path, image_ext: str, gray: bool, with_depth: bool):
    """A small BOP dataset written with json.dump + cv2.imwrite, following the spec only:
    integer numbers, extra keys, keys out of order, no masks, no scene_gt_info.json."""
    root.mkdir(parents=True)
    H, W = 48, 64
    with open(root / "camera.json", "w") as f:
        json.dump({"width": W, "height": H, "fx": 500, "fy": 501.5, "cx": 32, "cy": 24,
                   "depth_scale": 1.0, "model": "hand-made"}, f)
    scene = root / "test_primesense" / "000003"
    for sub in (["gray"] if gray else ["rgb"]) + (["depth"] if with_depth else []):
        (scene / sub).mkdir(parents=True)
    cam = {"10": {"view_level": 2, "depth_scale": 1, "cam_K": [500, 0, 32, 0, 501.5, 24, 0, 0, 1]},
           "2": {"cam_K": [500.0, 0.0, 32.0, 0.0, 501.5, 24.0, 0.0, 0.0, 1.0], "depth_scale": 1.0,
                 "cam_R_w2c": [1, 0, 0, 0, 1, 0, 0, 0, 1], "cam_t_w2c": [0, 0, 1000]}}
    # 90 deg about z, written with integers; t in mm
    gt = {"10": [{"obj_id": 2.0, "cam_t_m2c": [10, -20, 700], "extra": "x",
                  "cam_R_m2c": [0, -1, 0, 1, 0, 0, 0, 0, 1]}],
          "2": [{"cam_R_m2c": [1, 0, 0, 0, 1, 0, 0, 0, 1], "cam_t_m2c": [0.5, 0, 650.25],
                 "obj_id": 1},
                {"cam_R_m2c": [1, 0, 0, 0, -1, 0, 0, 0, -1], "cam_t_m2c": [-15, 5, 800],
                 "obj_id": 3}]}
    with open(scene / "scene_camera.json", "w") as f:
        json.dump(cam, f, indent=4)
    with open(scene / "scene_gt.json", "w") as f:
        json.dump(gt, f)
    for im_id in (2, 10):
        if gray:
            cv2.imwrite(str(scene / "gray" / f"{im_id:06d}{image_ext}"),
                        np.full((H, W), 90, np.uint8))
        else:  # OpenCV writes BGR: this is pure red in RGB
            cv2.imwrite(str(scene / "rgb" / f"{im_id:06d}{image_ext}"),
                        np.full((H, W, 3), (0, 0, 255), np.uint8))
        if with_depth:
            cv2.imwrite(str(scene / "depth" / f"{im_id:06d}.png"),
                        np.full((H, W), 700 + im_id, np.uint16))
    return gt


def test_hand_written_dataset_loads_in_metres(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".jpg", gray=False, with_depth=True)
    ds = BopDataset(tmp_path / "ds")
    assert ds.camera.shape == (48, 64) and ds.camera.fy == 501.5
    assert ds.splits() == ["test_primesense"] and ds.scene_ids("test_primesense") == [3]
    assert ds.im_ids("test_primesense", 3) == [2, 10]
    f = ds.load_frame("test_primesense", 3, 10)
    assert f.rgb.shape == (48, 64, 3)
    assert np.all(f.rgb[..., 0] > 240) and np.all(f.rgb[..., 2] < 15)  # red, RGB order
    assert f.depth.dtype == np.float32 and np.allclose(f.depth, 0.710)  # 710 units * 1 mm
    assert f.raw_camera["view_level"] == 2 and f.T_cam_world is None
    [obj] = f.objects
    assert obj.obj_id == 2 and obj.mask is None and obj.raw_info is None
    expected = np.array([[0, -1, 0, 0.010], [1, 0, 0, -0.020], [0, 0, 1, 0.700], [0, 0, 0, 1]])
    np.testing.assert_allclose(obj.T_cam_obj, expected, atol=1e-15)
    assert obj.raw_gt["extra"] == "x"
    f2 = ds.load_frame("test_primesense", 3, 2)
    np.testing.assert_allclose(f2.T_cam_world, make_pose(t=[0, 0, 1.0]), atol=0)
    np.testing.assert_allclose([o.T_cam_obj[:3, 3] for o in f2.objects],
                               [[0.0005, 0, 0.65025], [-0.015, 0.005, 0.8]], atol=1e-15)
    assert [o.obj_id for o in f2.objects] == [1, 3]


def test_hand_written_gray_rgb_only_dataset(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".tif", gray=True, with_depth=False)
    f = BopDataset(tmp_path / "ds").load_frame("test_primesense", 3, 2)
    assert f.depth is None and f.rgb.shape == (48, 64) and np.all(f.rgb == 90)
    assert len(f.objects) == 2


def test_missing_camera_json(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".png", gray=False, with_depth=True)
    (tmp_path / "ds" / "camera.json").unlink()
    with pytest.raises(InputError, match=r"camera\.json.*no such file"):
        BopDataset(tmp_path / "ds")


def test_camera_json_missing_field(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".png", gray=False, with_depth=True)
    (tmp_path / "ds" / "camera.json").write_text('{"fx": 1, "fy": 1, "cx": 0, "cy": 0}')
    with pytest.raises(InputError, match=r"camera\.json: height.*missing"):
        BopDataset(tmp_path / "ds")


def test_missing_scene_gt_json(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".png", gray=False, with_depth=True)
    (tmp_path / "ds/test_primesense/000003/scene_gt.json").unlink()
    with pytest.raises(InputError, match=r"000003/scene_gt\.json.*no such file"):
        BopDataset(tmp_path / "ds")


def test_bad_cam_k_length(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".png", gray=False, with_depth=True)
    path = tmp_path / "ds/test_primesense/000003/scene_camera.json"
    cam = json.loads(path.read_text())
    cam["10"]["cam_K"] = [500, 0, 32, 0, 501.5, 24]
    path.write_text(json.dumps(cam))
    ds = BopDataset(tmp_path / "ds")
    with pytest.raises(InputError, match=r"scene_camera\.json: im_id 10: cam_K: expected 9 "
                                         r"numbers.*got 6 values"):
        ds.im_ids("test_primesense", 3)


def test_bad_rotation_and_gt_info_count(tmp_path):
    _write_hand_dataset(tmp_path / "ds", ".png", gray=False, with_depth=True)
    scene = tmp_path / "ds/test_primesense/000003"
    gt = json.loads((scene / "scene_gt.json").read_text())
    gt["2"][1]["cam_R_m2c"] = [1, 0, 0, 0, 1, 0, 0, 0, -1]  # a reflection
    (scene / "scene_gt.json").write_text(json.dumps(gt))
    with pytest.raises(InputError, match=r"im_id 2, object 1: cam_R_m2c.*proper rotation"):
        BopDataset(tmp_path / "ds").load_frame("test_primesense", 3, 2)
    gt["2"][1]["cam_R_m2c"] = [1, 0, 0, 0, 1, 0, 0, 0, 1]
    (scene / "scene_gt.json").write_text(json.dumps(gt))
    (scene / "scene_gt_info.json").write_text(json.dumps({"2": [], "10": []}))
    with pytest.raises(InputError, match=r"scene_gt_info\.json: im_id 2.*2 records"):
        BopDataset(tmp_path / "ds").load_frame("test_primesense", 3, 2)


def test_depth_overflow_names_the_frame(tmp_path):
    f = _make_frame(np.random.default_rng(0), 1, 0.1)
    f.depth[5, 5] = 7.0  # > 65535 * 0.1 mm
    with pytest.raises(InputError, match=r"scene 2, im 9\) depth.*6\.5535 m.*got 7 m"):
        BopWriter(tmp_path).write_frame(2, 9, f)
    f.depth_scale = 1.0  # 1 mm steps reach 65.535 m
    BopWriter(tmp_path).write_frame(2, 9, f)


def test_writer_rejects_bad_input(tmp_path):
    f = _make_frame(np.random.default_rng(0), 1, 0.1)
    w = BopWriter(tmp_path)
    with pytest.raises(InputError, match="split"):
        BopWriter(tmp_path, split="models")
    bad = BopFrame(f.rgb[:10], f.depth, CAM, [])
    with pytest.raises(InputError, match=r"im 0\) rgb"):
        w.write_frame(0, 0, bad)
    f.objects[0].mask_visib = ~f.objects[0].mask
    with pytest.raises(InputError, match="mask_visib: expected a subset of mask"):
        w.write_frame(0, 0, f)
    f.objects[0].mask_visib = f.objects[0].mask
    f.objects[0].T_cam_obj = np.diag([1.0, 1.0, -1.0, 1.0])
    with pytest.raises(InputError, match="object 0 T_cam_obj"):
        w.write_frame(0, 0, f)


def test_models_round_trip(tmp_path):
    part = make_part("hex_nut", seed=0)
    with BopWriter(tmp_path) as w:
        w.write_camera(CAM)
        w.write_models({5: part})
    ds = BopDataset(tmp_path)
    assert list(ds.models_info) == [5]
    assert ds.models_info[5] == json.loads(json.dumps(part.models_info()))
    assert (tmp_path / "models/obj_000005.ply").is_file()
    loaded = ds.load_model(5)
    ply = tmp_path / "models/obj_000005.ply"
    assert loaded.source == str(ply) and loaded.source_units == "mm"
    assert loaded.checksum == hashlib.sha256(ply.read_bytes()).hexdigest()
    # mm in the file, metres in the API
    np.testing.assert_allclose(loaded.mesh.bounds, part.mesh.bounds, atol=1e-6)
    assert loaded.diameter == pytest.approx(part.diameter, abs=1e-6)
    assert len(loaded.symmetries_discrete) == len(part.symmetries_discrete)
    for a, b in zip(loaded.symmetries_discrete, part.symmetries_discrete, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    with pytest.raises(InputError, match=r"obj_000009\.ply"):
        ds.load_model(9)


@settings(max_examples=60, deadline=None)
@given(depth_scale=st.sampled_from([0.05, 0.1, 0.25, 1.0, 10.0]), seed=st.integers(0, 2**32 - 1))
def test_depth_units_survive_float32_metres(depth_scale, seed):
    """PNG units -> float32 metres -> PNG units is the identity over the whole uint16 range."""
    units = np.random.default_rng(seed).integers(0, 65536, (16, 16)).astype(np.uint16)
    units[0, :2] = (0, 65535)
    metres = depth_from_png_units(units, depth_scale)
    assert metres.dtype == np.float32
    assert np.array_equal(depth_to_png_units(metres, depth_scale), units)


def test_open_scanned_model_loads_from_a_bop_folder(tmp_path):
    """Published BOP datasets ship open (scanned) meshes: the reader loads them as they are."""
    import json

    import trimesh

    from weak_template_ros.twin.bop import BopDataset

    (tmp_path / "models").mkdir()
    box = trimesh.creation.box((40.0, 30.0, 20.0))  # mm
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2], process=False)  # one side missing
    open_box.export(tmp_path / "models" / "obj_000001.ply")
    info = {"1": {"diameter": 53.85, "min_x": -20.0, "min_y": -15.0, "min_z": -10.0,
                  "size_x": 40.0, "size_y": 30.0, "size_z": 20.0}}
    (tmp_path / "models" / "models_info.json").write_text(json.dumps(info))
    (tmp_path / "camera.json").write_text(json.dumps({"cx": 320, "cy": 240, "fx": 500, "fy": 500,
                                                      "height": 480, "width": 640, "depth_scale": 1.0}))
    model = BopDataset(tmp_path).load_model(1)
    assert len(model.mesh.faces) >= 10
    assert abs(model.extent[0] - 0.040) < 1e-6  # mm file -> metres
