"""Tests of weak_template_ros.models: loading, units, repair, procedural parts, symmetries."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import trimesh
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist

from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, random_rotation, rotation_from_rotvec
from weak_template_ros.models import (
    PART_FAMILIES,
    PartModel,
    load_mesh,
    make_part,
    save_mesh,
    stable_poses,
    symmetry_error,
)

# A recorded symmetry must map the surface onto itself within this (the brief's 0.05 mm);
# tessellation and float32 distance queries give ~0.01 mm.
SYMMETRY_TOL_M = 0.05e-3
# A rotation that is NOT a symmetry must move the surface by clearly more than that.
ASYMMETRY_MIN_M = 0.5e-3

FLIPS = {
    "180deg about x": make_pose(rotation_from_rotvec([math.pi, 0, 0])),
    "180deg about y": make_pose(rotation_from_rotvec([0, math.pi, 0])),
    "180deg about z": make_pose(rotation_from_rotvec([0, 0, math.pi])),
}


def box_mm_file(tmp_path, name="box.ply", size=(10.0, 20.0, 30.0)):
    """A closed box written in file units given by ``size`` (trimesh's own exporter)."""
    path = tmp_path / name
    trimesh.creation.box(size).export(path)
    return path


# ---------------------------------------------------------------------------------------------
# Units, loading, saving
# ---------------------------------------------------------------------------------------------


def test_auto_units_detects_mm_and_m(tmp_path):
    mm = load_mesh(box_mm_file(tmp_path, "mm.ply", (10.0, 20.0, 30.0)))
    assert mm.source_units == "mm" and mm.units_detected
    np.testing.assert_allclose(mm.extent, [0.010, 0.020, 0.030], atol=1e-12)
    assert "-> mm" in mm.units_note

    m = load_mesh(box_mm_file(tmp_path, "m.stl", (0.5, 1.0, 2.0)))  # diagonal 2.29 <= 5
    assert m.source_units == "m" and m.units_detected
    np.testing.assert_allclose(m.extent, [0.5, 1.0, 2.0], atol=1e-6)


def test_units_override(tmp_path):
    path = box_mm_file(tmp_path)
    as_m = load_mesh(path, units="m")
    assert as_m.source_units == "m" and not as_m.units_detected
    np.testing.assert_allclose(as_m.extent, [10.0, 20.0, 30.0], atol=1e-9)
    small_mm = load_mesh(box_mm_file(tmp_path, "small.obj", (1.0, 2.0, 3.0)), units="mm")
    np.testing.assert_allclose(small_mm.extent, [0.001, 0.002, 0.003], atol=1e-12)
    with pytest.raises(InputError, match="units"):
        load_mesh(path, units="cm")


def test_save_load_round_trip_mm(tmp_path):
    part = make_part("flange", seed=3)
    path = save_mesh(part, tmp_path / "sub" / "flange.ply")
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header")].decode()
    assert "binary_little_endian" in header and "property float nx" in header
    back = load_mesh(path)
    assert back.source_units == "mm" and back.units_detected and back.repairs == []
    assert back.checksum == hashlib.sha256(raw).hexdigest()
    # float32 millimetres: relative precision 6e-8 of <= 75 mm, i.e. < 1e-8 m.
    np.testing.assert_allclose(back.mesh.vertices, part.mesh.vertices, atol=1e-8)
    np.testing.assert_array_equal(back.mesh.faces, part.mesh.faces)
    # Saving in metres and loading with the matching override gives the same mesh.
    back_m = load_mesh(save_mesh(part, tmp_path / "flange_m.ply", units="m"), units="m")
    np.testing.assert_allclose(back_m.mesh.vertices, part.mesh.vertices, atol=1e-8)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    good = save_mesh(make_part("hex_nut", seed=0), tmp_path / "good.ply").read_bytes()
    rng = np.random.default_rng(0)
    cases = {
        "missing.ply": None,
        "truncated.ply": good[: len(good) // 2],
        "garbage.ply": rng.bytes(4096),
        "garbage.stl": rng.bytes(4096),
        "garbage.obj": rng.bytes(4096),
        "empty.ply": b"",
        "no_faces.ply": b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                        b"property float y\nproperty float z\nend_header\n0 0 0\n",
        "mesh.txt": good,
    }
    for name, data in cases.items():
        path = tmp_path / name
        if data is not None:
            _write(path, data)
        with pytest.raises(InputError) as err:
            load_mesh(path)
        assert str(path) in str(err.value), name


def test_open_mesh_beyond_repair_is_refused(tmp_path):
    cyl = trimesh.creation.cylinder(radius=10.0, height=20.0, sections=32)
    top_cap = cyl.face_normals[:, 2] > 0.9  # a 32-gon opening: fill_holes only fills tri/quad
    path = tmp_path / "open_cup.ply"
    trimesh.Trimesh(cyl.vertices, cyl.faces[~top_cap], process=False).export(path)
    with pytest.raises(InputError, match="non-manifold beyond repair") as err:
        load_mesh(path)
    assert str(path) in str(err.value)
    # Scanned models of external datasets may be open: accepted on request, and said so.
    kept = load_mesh(path, require_watertight=False)
    assert not kept.mesh.is_watertight and any("left open: 32" in r for r in kept.repairs)


def test_fixable_defects_are_repaired_and_reported(tmp_path):
    box = trimesh.creation.box((10.0, 20.0, 30.0))
    holed = tmp_path / "holed.ply"
    trimesh.Trimesh(box.vertices, box.faces[1:], process=False).export(holed)
    part = load_mesh(holed)
    assert part.mesh.is_watertight and any("filled holes" in r for r in part.repairs)
    assert part.mesh.volume == pytest.approx(6e-6, rel=1e-9)

    inverted = tmp_path / "inverted.obj"
    trimesh.Trimesh(box.vertices, box.faces[:, ::-1], process=False).export(inverted)
    part = load_mesh(inverted)
    assert any("outward" in r for r in part.repairs)
    assert part.mesh.volume > 0


# ---------------------------------------------------------------------------------------------
# PartModel geometry and BOP models_info
# ---------------------------------------------------------------------------------------------


def test_models_info_of_a_known_box():
    box = trimesh.creation.box((0.010, 0.020, 0.030))
    part = PartModel(name="box", mesh=box, source="test")
    info = part.models_info()
    assert info["diameter"] == pytest.approx(math.sqrt(100 + 400 + 900), abs=1e-9)
    assert [info[k] for k in ("min_x", "min_y", "min_z")] == pytest.approx([-5, -10, -15])
    assert [info[k] for k in ("size_x", "size_y", "size_z")] == pytest.approx([10, 20, 30])
    assert "symmetries_discrete" not in info and "symmetries_continuous" not in info
    json.dumps(info)  # plain JSON types only


def test_diameter_matches_brute_force_over_all_vertices():
    part = make_part("l_bracket", seed=4)
    assert part.diameter == pytest.approx(pdist(part.mesh.vertices).max(), rel=1e-12)


def test_models_info_symmetries_in_mm_and_back():
    part = make_part("hex_nut", seed=0, chamfer="both")
    T = make_pose(rotation_from_rotvec([0, 0, math.pi / 3]), [0.001, 0.002, 0.003])
    part.symmetries_discrete.append(T)
    info = json.loads(json.dumps(part.models_info()))
    assert len(info["symmetries_discrete"]) == 12
    assert info["symmetries_discrete"][-1][3::4][:3] == pytest.approx([1.0, 2.0, 3.0])  # mm
    back = PartModel.from_models_info("obj_000001", part, info)
    assert back.checksum == part.checksum and back.name == "obj_000001"
    for a, b in zip(back.symmetries_discrete, part.symmetries_discrete, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_disc=st.integers(0, 4), n_cont=st.integers(0, 2))
def test_symmetry_round_trip_through_models_info(seed, n_disc, n_cont):
    rng = np.random.default_rng(seed)
    disc = [make_pose(random_rotation(rng), rng.uniform(-0.1, 0.1, 3)) for _ in range(n_disc)]
    cont = [{"axis": rng.normal(size=3) + 0.1, "offset": rng.uniform(-0.1, 0.1, 3)}
            for _ in range(n_cont)]
    mesh = trimesh.creation.box((0.03, 0.02, 0.01))
    part = PartModel("p", mesh, "test", symmetries_discrete=disc, symmetries_continuous=cont)
    back = PartModel.from_models_info("p", mesh, json.loads(json.dumps(part.models_info())))
    assert len(back.symmetries_discrete) == n_disc and len(back.symmetries_continuous) == n_cont
    for a, b in zip(back.symmetries_discrete, disc, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    for a, b in zip(back.symmetries_continuous, part.symmetries_continuous, strict=True):
        np.testing.assert_allclose(a["axis"], b["axis"], atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(a["axis"]), 1.0, atol=1e-12)
        np.testing.assert_allclose(a["offset"], b["offset"], atol=1e-12)


def test_from_models_info_rejects_bad_symmetries():
    mesh = trimesh.creation.box((0.01, 0.01, 0.01))
    with pytest.raises(InputError, match="symmetries_discrete"):
        PartModel.from_models_info("obj", mesh, {"symmetries_discrete": [[1.0] * 12]})
    with pytest.raises(InputError, match="symmetries_discrete"):  # a reflection is no rotation
        PartModel.from_models_info("obj", mesh, {"symmetries_discrete": [
            [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]})
    with pytest.raises(InputError, match="symmetries_continuous"):
        PartModel.from_models_info("obj", mesh, {"symmetries_continuous": [
            {"axis": [0, 0, 0], "offset": [0, 0, 0]}]})


def test_symmetry_transforms_combine_discrete_and_continuous():
    part = make_part("bushing", seed=0)
    part.symmetries_discrete.append(make_pose(rotation_from_rotvec([math.pi, 0, 0])))
    Ts = part.symmetry_transforms(max_sym_disc_step=0.1)
    steps = math.ceil(math.pi / 0.1)
    assert Ts.shape == (2 * steps, 4, 4)
    np.testing.assert_allclose(Ts[0], np.eye(4))
    # The BOP toolkit's order: for each discrete D (identity first), each continuous step C: C D.
    C1 = make_pose(rotation_from_rotvec([0, 0, 2 * math.pi / steps]))
    np.testing.assert_allclose(Ts[1], C1, atol=1e-12)
    np.testing.assert_allclose(Ts[steps + 1], C1 @ part.symmetries_discrete[0], atol=1e-12)
    assert len(make_part("hex_nut", 0, chamfer="both").symmetry_transforms()) == 12


def test_sample_points_on_surface_with_outward_normals():
    part = make_part("connector_housing", seed=1)
    p1, n1 = part.sample_points(500, seed=7)
    p2, n2 = part.sample_points(500, seed=7)
    assert p1.shape == (500, 3) and n1.shape == (500, 3)
    assert p1.tobytes() == p2.tobytes() and n1.tobytes() == n2.tobytes()
    assert not np.array_equal(p1, part.sample_points(500, seed=8)[0])
    _, dist, _ = trimesh.proximity.closest_point(part.mesh, p1)
    assert dist.max() < 1e-9
    np.testing.assert_allclose(np.linalg.norm(n1, axis=1), 1.0, atol=1e-9)
    # Outward: stepping 0.05 mm along the normal leaves the solid.
    assert not part.mesh.contains(p1 + 5e-5 * n1).any()
    assert part.mesh.contains(p1 - 5e-5 * n1).mean() > 0.97  # thin walls may be crossed


def test_symmetry_error_of_a_known_non_symmetry():
    """Box 10x20x30 mm turned 90° about z: its x faces land 5 mm outside the original box."""
    box = trimesh.creation.box((0.010, 0.020, 0.030))
    quarter = make_pose(rotation_from_rotvec([0, 0, math.pi / 2]))
    assert symmetry_error(box, quarter) == pytest.approx(0.005, abs=1.1e-6)
    half = make_pose(rotation_from_rotvec([0, 0, math.pi]))
    assert symmetry_error(box, half) < 1.1e-6


def test_point_triangle_distance_on_slivers():
    from weak_template_ros.models import _point_triangle_distance

    sliver = np.array([[[0.0, 0.0, 0.0], [0.06, 0.0, 0.0], [0.03, 1e-9, 0.0]]])
    for p, expected in (([0.03, 1e-5, 0.0], 1e-5 - 1e-9), ([0.03, 0.0, 2e-5], 2e-5),
                        ([0.07, 0.0, 0.0], 0.01), ([0.01, -3e-6, 0.0], 3e-6)):
        d = _point_triangle_distance(np.array([p]), sliver)
        assert d[0] == pytest.approx(expected, rel=1e-6, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Procedural parts
# ---------------------------------------------------------------------------------------------


def _in_group(T, part):
    """True if T is a recorded discrete symmetry or a rotation about a recorded axis."""
    R, t = T[:3, :3], T[:3, 3]
    return any(np.allclose(T, S, atol=1e-9) for S in part.symmetries_discrete) or any(
        np.allclose(R @ s["axis"], s["axis"], atol=1e-9)
        and np.allclose(t, s["offset"] - R @ s["offset"], atol=1e-9)
        for s in part.symmetries_continuous)


@pytest.mark.parametrize("family", sorted(PART_FAMILIES))
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_family_builds_watertight_with_exact_symmetries(family, seed):
    part = make_part(family, seed=seed)
    mesh = part.mesh
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert part.source == f"procedural:{family}" and part.source_units == "m"
    assert 200 <= len(mesh.faces) <= 5000 or family in ("connector_housing", "t_profile")
    size_mm = part.extent * 1e3
    assert 20 <= size_mm.max() <= 160, size_mm
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)  # origin: bbox centre

    for i, T in enumerate(part.symmetries_discrete):
        assert symmetry_error(mesh, T) < SYMMETRY_TOL_M, f"discrete symmetry {i}"
    for s in part.symmetries_continuous:
        for angle in np.random.default_rng(0).uniform(0.1, 2 * math.pi - 0.1, 4):
            R = rotation_from_rotvec(s["axis"] * angle)
            T = make_pose(R, s["offset"] - R @ s["offset"])
            assert symmetry_error(mesh, T) < SYMMETRY_TOL_M, f"continuous {angle:.3f} rad"
    # Completeness on the usual candidates: a 180° flip not recorded must NOT map the part.
    for label, T in FLIPS.items():
        if not _in_group(T, part):
            assert symmetry_error(mesh, T) > ASYMMETRY_MIN_M, f"{label} is an unrecorded symmetry"


def test_expected_symmetry_groups():
    assert make_part("l_bracket", 2).symmetries_discrete == []
    assert make_part("connector_housing", 2).symmetries_discrete == []
    assert len(make_part("flange", 0, n_bolt_holes=5).symmetries_discrete) == 4
    assert len(make_part("hex_nut", 0, chamfer="both").symmetries_discrete) == 11
    assert len(make_part("hex_nut", 0, chamfer="none").symmetries_discrete) == 11
    assert len(make_part("hex_nut", 0, chamfer="top").symmetries_discrete) == 5
    assert len(make_part("t_profile", 0).symmetries_discrete) == 1
    bushing = make_part("bushing", 0)
    assert bushing.symmetries_discrete == [] and len(bushing.symmetries_continuous) == 1
    info = bushing.models_info()
    assert info["symmetries_continuous"] == [{"axis": [0.0, 0.0, 1.0], "offset": [0.0, 0.0, 0.0]}]


def test_one_sided_chamfer_breaks_the_flips():
    part = make_part("hex_nut", 0, chamfer="top")
    assert symmetry_error(part.mesh, FLIPS["180deg about x"]) > ASYMMETRY_MIN_M


@pytest.mark.parametrize("family", sorted(PART_FAMILIES))
def test_seed_determinism(family):
    a, b = make_part(family, seed=5), make_part(family, seed=5)
    assert a.mesh.vertices.tobytes() == b.mesh.vertices.tobytes()
    assert a.mesh.faces.tobytes() == b.mesh.faces.tobytes()
    assert a.checksum == b.checksum and a.params == b.params
    c = make_part(family, seed=6)
    assert c.checksum != a.checksum and c.params != a.params
    assert (c.mesh.vertices.shape != a.mesh.vertices.shape
            or not np.allclose(c.mesh.vertices, a.mesh.vertices))


def test_params_override_validation_and_defaults():
    base = make_part("flange", seed=2)
    fixed = make_part("flange", seed=2, n_bolt_holes=4)
    assert fixed.params["n_bolt_holes"] == 4
    # Fixing one parameter leaves the seed's other draws unchanged.
    assert {k: v for k, v in fixed.params.items() if k != "n_bolt_holes"} == {
        k: v for k, v in base.params.items() if k != "n_bolt_holes"}
    assert fixed.checksum != base.checksum
    default = make_part("flange", seed=None)
    assert default.params["outer_diameter"] == 0.1 and default.name == "flange_default"
    with pytest.raises(InputError, match="outer_diameter"):
        make_part("flange", outer_diameter=1.0)
    with pytest.raises(InputError, match="unknown"):
        make_part("flange", bolts=3)
    with pytest.raises(InputError, match="chamfer"):
        make_part("hex_nut", chamfer="sideways")
    with pytest.raises(InputError, match="family"):
        make_part("sprocket")


# ---------------------------------------------------------------------------------------------
# Stable poses
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["l_bracket", "hex_nut", "t_profile"])
def test_stable_poses_rest_on_the_table(family):
    part = make_part(family, seed=0)
    poses = stable_poses(part, n_max=4)
    assert 1 <= len(poses) <= 4
    probs = [p for _, p in poses]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    for T, _ in poses:
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        z = trimesh.transform_points(part.mesh.vertices, T)[:, 2]
        assert abs(z.min()) < 1e-9
        # Resting on a face: at least three vertices touch the table (within 1 µm).
        assert np.count_nonzero(z < 1e-6) >= 3


def test_stable_poses_of_a_box_are_its_three_face_pairs():
    box = PartModel("box", trimesh.creation.box((0.01, 0.02, 0.03)), "test")
    poses = stable_poses(box, n_max=10)
    assert len(poses) == 6
    assert sum(p for _, p in poses) == pytest.approx(1.0, abs=1e-6)
    # Most probable: lying on the largest face (20 x 30 mm), i.e. height 10 mm.
    T, _ = poses[0]
    z = trimesh.transform_points(box.mesh.vertices, T)[:, 2]
    assert z.max() == pytest.approx(0.010, abs=1e-9)
