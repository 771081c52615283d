"""Part models for the digital twin: mesh loading with unit detection, procedural parts, symmetries.

A :class:`PartModel` holds a closed triangle mesh in METRES with outward normals, where it came
from (file path or ``"procedural:<family>"``), a checksum of that source, and the part's
symmetries as BOP records them (discrete 4x4 transforms and continuous axes, both excluding the
identity). BOP ``models_info.json`` entries (millimetres) are written by
:meth:`PartModel.models_info` and read back by :meth:`PartModel.from_models_info`.

Three entry points make models:

- :func:`load_mesh` reads PLY / OBJ / STL, decides mm vs m (rule below), repairs what trimesh can
  repair (duplicate vertices, degenerate faces, small holes, inconsistent winding) and refuses
  the rest with an :class:`~weak_template_ros.errors.InputError` naming the file.
- :func:`make_part` builds texture-less industrial parts (``PART_FAMILIES``) from a seed, with
  their symmetries derived from the construction.
- :meth:`PartModel.from_models_info` wraps a mesh with the symmetries of a BOP models_info entry.

Unit rule of ``load_mesh(units="auto")``: a mesh whose bounding-box diagonal is greater than
:data:`AUTO_UNITS_DIAGONAL_THRESHOLD` (5) in file units is taken as millimetres, otherwise as
metres. So parts between 5 mm and 5 m across are detected correctly; smaller mm parts or
larger m parts need ``units=`` explicitly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely.geometry
import trimesh
import trimesh.boolean
import trimesh.creation
import trimesh.exchange.ply
import trimesh.poses
import trimesh.repair
import trimesh.sample

from weak_template_ros import config
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.geometry import check_pose, make_pose, rotation_from_rotvec

__all__ = [
    "AUTO_UNITS_DIAGONAL_THRESHOLD",
    "MESH_SUFFIXES",
    "PART_FAMILIES",
    "BushingParams",
    "ConnectorHousingParams",
    "FlangeParams",
    "HexNutParams",
    "LBracketParams",
    "PartModel",
    "TProfileParams",
    "load_mesh",
    "make_part",
    "repair_mesh",
    "save_mesh",
    "stable_poses",
    "symmetry_error",
]

#: Bounding-box diagonal (in file units) above which ``units="auto"`` takes a mesh as mm.
AUTO_UNITS_DIAGONAL_THRESHOLD = 5.0
#: File types :func:`load_mesh` reads.
MESH_SUFFIXES = (".ply", ".obj", ".stl")
#: Bumped whenever the procedural geometry code changes, so checksums of old parts differ.
PROCEDURAL_GENERATOR_VERSION = 1

_UNITS_SCALE = {"m": 1.0, "mm": 1e-3}


# --------------------------------------------------------------------------------------------
# PartModel
# --------------------------------------------------------------------------------------------


@dataclass
class PartModel:
    """A rigid part: closed mesh in metres, its source and its symmetries.

    Attributes
    ----------
    name : str
        Part name (file stem, family + seed, or BOP object id).
    mesh : trimesh.Trimesh
        Surface in METRES in the object frame; watertight when possible, outward normals.
    source : str
        File path, ``"procedural:<family>"`` or where the mesh came from.
    source_units : str
        Units of the source, ``"m"`` or ``"mm"``.
    units_detected : bool
        True if ``source_units`` was decided from the size, False if the caller said so.
    checksum : str
        sha256 hex of the source file bytes, or of the canonical description of a procedural
        part (family, parameters, seed, generator version).
    symmetries_discrete : list of np.ndarray
        4x4 transforms (metres) mapping the part onto itself, identity excluded.
    symmetries_continuous : list of dict
        ``{"axis": (3,) unit vector, "offset": (3,) metres}``: rotations by any angle about the
        axis through ``offset`` map the part onto itself.
    repairs : list of str
        What :func:`load_mesh` had to fix (empty when nothing).
    params : dict
        Parameters of a procedural part (metres/radians), empty for loaded meshes.
    units_note : str
        How ``source_units`` was decided (the auto rule and the measured diagonal, or "given").
    """

    name: str
    mesh: trimesh.Trimesh
    source: str
    source_units: str = "m"
    units_detected: bool = False
    checksum: str = ""
    symmetries_discrete: list[np.ndarray] = field(default_factory=list)
    symmetries_continuous: list[dict] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    units_note: str = ""

    def __post_init__(self):
        if not isinstance(self.mesh, trimesh.Trimesh):
            raise InputError(f"{self.name}.mesh", "a trimesh.Trimesh", type(self.mesh).__name__)
        if self.source_units not in _UNITS_SCALE:
            raise InputError(f"{self.name}.source_units", "'m' or 'mm'", repr(self.source_units))
        self.symmetries_discrete = [
            check_pose(T, name=f"{self.name}.symmetries_discrete[{i}]")
            for i, T in enumerate(self.symmetries_discrete)
        ]
        self.symmetries_continuous = [
            _check_continuous(s, f"{self.name}.symmetries_continuous[{i}]")
            for i, s in enumerate(self.symmetries_continuous)
        ]
        if not self.checksum:
            self.checksum = _mesh_checksum(self.mesh)

    def __repr__(self) -> str:
        return (f"PartModel(name={self.name!r}, source={self.source!r}, "
                f"source_units={self.source_units!r}, faces={len(self.mesh.faces)}, "
                f"extent_mm={np.round(self.extent * 1e3, 3).tolist()}, "
                f"symmetries={len(self.symmetries_discrete)} discrete + "
                f"{len(self.symmetries_continuous)} continuous, checksum={self.checksum[:12]}…)")

    # -- geometry ------------------------------------------------------------------------

    @functools.cached_property
    def diameter(self) -> float:
        """Largest distance between two vertices, metres (BOP's definition; from hull vertices).

        Cached: the hull costs ~5 ms and the mesh of a PartModel is not modified after creation."""
        return _max_pairwise_distance(_hull_vertices(self.mesh))

    @property
    def min_corner(self) -> np.ndarray:
        """Lower corner of the axis-aligned bounding box, metres, shape (3,)."""
        return np.asarray(self.mesh.bounds[0], dtype=np.float64).copy()

    @property
    def extent(self) -> np.ndarray:
        """Size of the axis-aligned bounding box, metres, shape (3,)."""
        b = np.asarray(self.mesh.bounds, dtype=np.float64)
        return b[1] - b[0]

    def sample_points(self, n: int, seed: int | np.random.Generator = 0):
        """Points uniformly distributed on the surface (area-weighted), seeded.

        Parameters
        ----------
        n : int
            Number of points (>= 1).
        seed : int or np.random.Generator
            Same seed, same points.

        Returns
        -------
        points : np.ndarray
            (n, 3) float64, metres, object frame.
        normals : np.ndarray
            (n, 3) float64 unit outward face normals at the points.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError("n", "an integer >= 1", repr(n))
        points, face_index = trimesh.sample.sample_surface(self.mesh, int(n), seed=seed)
        normals = np.asarray(self.mesh.face_normals[face_index], dtype=np.float64)
        return np.asarray(points, dtype=np.float64), normals

    def symmetry_transforms(self, max_sym_disc_step: float = 0.01) -> np.ndarray:
        """All symmetry transforms, identity included, continuous ones discretised (metres).

        The same set in the same order as the BOP toolkit's
        ``misc.get_symmetry_transformations``: identity then the discrete symmetries, each
        composed (``C @ D``) with every step of the continuous axes, each axis cut into
        ``ceil(pi / max_sym_disc_step)`` equal angle steps starting at zero. The identity
        comes first.

        Returns
        -------
        np.ndarray
            (K, 4, 4) float64.
        """
        if not (max_sym_disc_step > 0):
            raise InputError("max_sym_disc_step", "a number > 0", max_sym_disc_step)
        disc = [np.eye(4), *self.symmetries_discrete]
        cont = []
        steps = math.ceil(math.pi / max_sym_disc_step)
        for s in self.symmetries_continuous:
            for i in range(steps):
                R = rotation_from_rotvec(s["axis"] * (2.0 * math.pi * i / steps))
                cont.append(make_pose(R, s["offset"] - R @ s["offset"]))
        return np.stack([C @ D for D in disc for C in (cont or [np.eye(4)])])

    # -- BOP models_info -----------------------------------------------------------------

    def models_info(self) -> dict:
        """The BOP ``models_info.json`` entry of this part, in MILLIMETRES.

        Keys: diameter, min_x, min_y, min_z, size_x, size_y, size_z, and when the part has
        them symmetries_discrete (list of 16 floats, row-major 4x4, translation in mm) and
        symmetries_continuous (list of ``{"axis": [3], "offset": [3] mm}``).
        """
        mn, size = self.min_corner * 1e3, self.extent * 1e3
        info: dict[str, Any] = {
            "diameter": float(self.diameter * 1e3),
            "min_x": float(mn[0]), "min_y": float(mn[1]), "min_z": float(mn[2]),
            "size_x": float(size[0]), "size_y": float(size[1]), "size_z": float(size[2]),
        }
        if self.symmetries_discrete:
            syms = []
            for T in self.symmetries_discrete:
                T_mm = np.array(T, dtype=np.float64)
                T_mm[:3, 3] *= 1e3
                syms.append([float(v) for v in T_mm.reshape(16)])
            info["symmetries_discrete"] = syms
        if self.symmetries_continuous:
            info["symmetries_continuous"] = [
                {"axis": [float(v) for v in s["axis"]],
                 "offset": [float(v) for v in np.asarray(s["offset"]) * 1e3]}
                for s in self.symmetries_continuous
            ]
        return info

    @classmethod
    def from_models_info(cls, name: str, mesh: trimesh.Trimesh | PartModel, info: dict,
                         source: str = "models_info", checksum: str = "") -> PartModel:
        """Wrap a mesh (metres) with the symmetries of a BOP models_info entry (mm).

        Parameters
        ----------
        name : str
            Object name (e.g. ``"obj_000001"``), also used in error messages.
        mesh : trimesh.Trimesh or PartModel
            Surface in metres. A PartModel (e.g. from ``load_mesh(path, units="mm")``) keeps
            its source, units, checksum and repairs; its symmetries are replaced by ``info``'s.
        info : dict
            One models_info.json entry; only the symmetry keys are read (sizes are derived from
            the mesh).
        source, checksum : str
            Used for a bare Trimesh; default checksum is the sha256 of its vertex/face arrays.
        """
        if not isinstance(info, dict):
            raise InputError(f"{name}: models_info", "a dict", type(info).__name__)
        disc = []
        for i, sym in enumerate(info.get("symmetries_discrete", []) or []):
            arr = np.asarray(sym, dtype=np.float64)
            if arr.size != 16:
                raise InputError(f"{name}: symmetries_discrete[{i}]", "16 numbers (row-major 4x4)",
                                 describe_array(arr))
            T = arr.reshape(4, 4).copy()
            T[:3, 3] *= 1e-3
            # models_info files carry rounded rotations: accept 1e-4, then re-orthonormalise.
            check_pose(T, name=f"{name}: symmetries_discrete[{i}]", atol=1e-4)
            T[:3, :3] = _nearest_rotation(T[:3, :3])
            disc.append(T)
        cont = []
        for i, sym in enumerate(info.get("symmetries_continuous", []) or []):
            if not isinstance(sym, dict) or "axis" not in sym:
                raise InputError(f"{name}: symmetries_continuous[{i}]",
                                 "a dict with 'axis' and 'offset'", repr(sym))
            offset = np.asarray(sym.get("offset", [0.0, 0.0, 0.0]), dtype=np.float64) * 1e-3
            cont.append({"axis": sym["axis"], "offset": offset})
        if isinstance(mesh, PartModel):
            return dataclasses.replace(mesh, name=name, symmetries_discrete=disc,
                                       symmetries_continuous=cont)
        return cls(name=name, mesh=mesh, source=source, source_units="m", units_detected=False,
                   checksum=checksum, symmetries_discrete=disc, symmetries_continuous=cont)


def _check_continuous(sym: dict, name: str) -> dict:
    try:
        axis = np.asarray(sym["axis"], dtype=np.float64).reshape(3)
        offset = np.asarray(sym.get("offset", np.zeros(3)), dtype=np.float64).reshape(3)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(name, "{'axis': 3 numbers, 'offset': 3 numbers (m)}", repr(sym)) from exc
    n = np.linalg.norm(axis)
    if not np.isfinite(n) or n < 1e-9 or not np.all(np.isfinite(offset)):
        raise InputError(name, "a finite non-zero axis and a finite offset", repr(sym))
    return {"axis": axis / n, "offset": offset}


def _nearest_rotation(R: np.ndarray) -> np.ndarray:
    """Closest orthogonal matrix to a near-rotation 3x3 matrix (SVD projection)."""
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def _hull_vertices(mesh: trimesh.Trimesh) -> np.ndarray:
    try:
        return np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
    except Exception:  # qhull fails on flat/degenerate inputs: all vertices give the same answer
        return np.asarray(mesh.vertices, dtype=np.float64)


def _max_pairwise_distance(points: np.ndarray, chunk: int = 2048) -> float:
    """Max Euclidean distance between any two points, chunked to bound memory (O(n^2) time)."""
    best = 0.0
    for i in range(0, len(points), chunk):
        a = points[i:i + chunk]
        d2 = ((a[:, None, :] - points[None, i:, :]) ** 2).sum(-1)
        if d2.size:
            best = max(best, float(d2.max()))
    return math.sqrt(best)


def _mesh_checksum(mesh: trimesh.Trimesh) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(mesh.vertices, dtype="<f8").tobytes())
    h.update(np.ascontiguousarray(mesh.faces, dtype="<i8").tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------


def _edge_defects(mesh: trimesh.Trimesh) -> int:
    """Number of edges not shared by exactly two faces (open or non-manifold edges)."""
    if len(mesh.faces) == 0:
        return 0
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int(np.count_nonzero(counts != 2))


def repair_mesh(mesh: trimesh.Trimesh, name: str = "mesh", soup: bool = False,
                require_watertight: bool = True) -> list[str]:
    """Repair ``mesh`` in place with trimesh; return what was done, raise if beyond repair.

    Steps: merge duplicate vertices, drop faces with a repeated vertex and duplicate faces, fill
    holes of one triangle or quad (trimesh.repair.fill_holes), make winding consistent and
    normals outward (trimesh.repair.fix_normals). A mesh still not watertight afterwards (open
    boundaries larger than a quad, edges shared by more than two faces) raises InputError
    naming ``name``.
    ``soup=True`` (STL: a format without shared vertices) does not report the vertex merge.
    ``require_watertight=False`` keeps an open mesh instead (said in the returned list).
    """
    repairs: list[str] = []
    n_v = len(mesh.vertices)
    mesh.merge_vertices()
    if len(mesh.vertices) < n_v and not soup:
        repairs.append(f"merged {n_v - len(mesh.vertices)} duplicate vertices")
    n_f = len(mesh.faces)
    f = mesh.faces
    # Only topologically degenerate faces (a repeated vertex) go: zero-area slivers with three
    # distinct vertices (booleans make them) keep the surface closed and are harmless.
    mesh.update_faces((f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2]))
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) < n_f:
        repairs.append(f"removed {n_f - len(mesh.faces)} degenerate or duplicate faces")
    if len(mesh.faces) == 0:
        raise InputError(name, "a mesh with non-degenerate faces", "only degenerate faces")
    if not mesh.is_watertight:
        open_before = _edge_defects(mesh)
        trimesh.repair.fill_holes(mesh)
        if mesh.is_watertight:
            repairs.append(f"filled holes ({open_before} open edges)")
    if not mesh.is_watertight and not require_watertight:
        trimesh.repair.fix_winding(mesh)
        repairs.append(f"left open: {_edge_defects(mesh)} open or non-manifold edges "
                       "(not watertight; volume, centre of mass and inside tests are unreliable)")
        return repairs
    if not mesh.is_watertight:
        raise InputError(
            name,
            "a closed manifold surface (watertight), or one trimesh can repair: duplicate "
            "vertices, triangle/quad holes, inconsistent winding",
            f"non-manifold beyond repair: {_edge_defects(mesh)} open or non-manifold edges "
            "after repair",
        )
    consistent = mesh.is_winding_consistent
    inward = consistent and mesh.volume < 0
    trimesh.repair.fix_normals(mesh, multibody=True)
    if not consistent:
        repairs.append("made face winding consistent and normals outward")
    elif inward:
        repairs.append("flipped all faces so normals point outward")
    if mesh.volume < 0:  # fix_normals orients each body; guard against a whole-mesh inversion
        mesh.invert()
    return repairs


def load_mesh(path: str | Path, units: str = "auto", name: str | None = None,
              require_watertight: bool = True) -> PartModel:
    """Load a PLY / OBJ / STL part model into metres, repairing what trimesh can repair.

    Parameters
    ----------
    path : str or Path
        Mesh file.
    units : {"auto", "m", "mm"}
        Units of the file. ``"auto"``: a bounding-box diagonal greater than
        :data:`AUTO_UNITS_DIAGONAL_THRESHOLD` (5, in file units) means millimetres, else metres;
        the decision is in ``result.source_units`` with ``result.units_detected = True``.
    name : str, optional
        Part name; default the file stem.
    require_watertight : bool
        True (default): a surface still open after repair is an error. False: it is kept
        (e.g. scanned models of external datasets) and ``repairs`` says it is open.

    Returns
    -------
    PartModel
        Mesh in metres (vertices keep the file's object frame), ``checksum`` = sha256 of the file
        bytes, ``repairs`` lists what was fixed, no symmetries (unknown for a file).

    Raises
    ------
    InputError
        Naming the file: missing, unreadable or corrupt file, unsupported suffix, no faces,
        non-finite vertices, surface not watertight even after repair.
    """
    if units not in ("auto", "m", "mm"):
        raise InputError("units", "one of ['auto', 'm', 'mm']", repr(units))
    path = Path(path)
    where = str(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise InputError(where, f"a mesh file with suffix in {list(MESH_SUFFIXES)}",
                         repr(path.suffix))
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InputError(where, "an existing mesh file", "no such file") from exc
    except OSError as exc:
        raise InputError(where, "a readable mesh file", f"{type(exc).__name__}: {exc}") from exc
    if not data:
        raise InputError(where, f"a {suffix[1:].upper()} mesh", "an empty file (0 bytes)")
    try:
        mesh = trimesh.load_mesh(io.BytesIO(data), file_type=suffix[1:], process=False)
    except Exception as exc:  # trimesh's loaders raise many types on corrupt bytes
        raise InputError(where, f"a valid {suffix[1:].upper()} mesh",
                         f"unreadable data ({type(exc).__name__}: {exc})") from exc
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_mesh() if len(mesh.geometry) else trimesh.Trimesh()
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(where, "a mesh with triangle faces", "no faces (empty mesh or point cloud)")
    vertices = np.asarray(mesh.vertices)
    if not np.all(np.isfinite(vertices)):
        raise InputError(where, "finite vertex coordinates", "NaN or inf vertices")
    if len(mesh.faces) and (mesh.faces.min() < 0 or mesh.faces.max() >= len(vertices)):
        raise InputError(where, "face indices within the vertex list", "out-of-range indices")
    mesh = trimesh.Trimesh(vertices=vertices.astype(np.float64), faces=mesh.faces, process=False)
    repairs = repair_mesh(mesh, name=where, soup=suffix == ".stl",
                          require_watertight=require_watertight)

    diagonal = float(np.linalg.norm(mesh.extents))
    if units == "auto":
        source_units = "mm" if diagonal > AUTO_UNITS_DIAGONAL_THRESHOLD else "m"
        units_note = (f"auto: bounding-box diagonal {diagonal:.6g} file units "
                      f"{'>' if source_units == 'mm' else '<='} {AUTO_UNITS_DIAGONAL_THRESHOLD:g}"
                      f" -> {source_units}")
    else:
        source_units = units
        units_note = f"given by the caller: {units}"
    if source_units == "mm":
        mesh.apply_scale(_UNITS_SCALE["mm"])
    return PartModel(
        name=name if name is not None else path.stem,
        mesh=mesh,
        source=where,
        source_units=source_units,
        units_detected=units == "auto",
        checksum=hashlib.sha256(data).hexdigest(),
        repairs=repairs,
        units_note=units_note,
    )


def save_mesh(model: PartModel, path: str | Path, units: str = "mm") -> Path:
    """Write the model as a binary PLY with vertex normals (BOP model files are PLY in mm).

    Parameters
    ----------
    model : PartModel
    path : str or Path
        Output file (parent folders are created).
    units : {"mm", "m"}
        Units of the written coordinates.

    Returns
    -------
    Path
        The written file.
    """
    if units not in _UNITS_SCALE:
        raise InputError("units", "'mm' or 'm'", repr(units))
    if not isinstance(model, PartModel):
        raise InputError("model", "a PartModel", type(model).__name__)
    path = Path(path)
    mesh = model.mesh.copy()
    mesh.apply_scale(1.0 / _UNITS_SCALE[units])
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=True,
                                           include_attributes=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise InputError(str(path), "a writable path", f"{type(exc).__name__}: {exc}") from exc
    return path


# --------------------------------------------------------------------------------------------
# Stable poses and symmetry checking
# --------------------------------------------------------------------------------------------


def stable_poses(model: PartModel, n_max: int = 8) -> list[tuple[np.ndarray, float]]:
    """Resting poses of the part on a table (z = 0 plane, z up), most probable first.

    Thin wrapper on :func:`trimesh.poses.compute_stable_poses` (quasi-static drop probability
    of each convex-hull face, centre of mass of the solid); each pose is shifted so the lowest
    vertex lies exactly on z = 0.

    Returns
    -------
    list of (T_table_obj, probability)
        ``T_table_obj`` (4, 4) float64 in metres; probabilities as trimesh gives them (over
        all poses, so the kept ones sum to <= 1).
    """
    if isinstance(n_max, bool) or not isinstance(n_max, (int, np.integer)) or n_max < 1:
        raise InputError("n_max", "an integer >= 1", repr(n_max))
    with np.errstate(invalid="ignore"):  # trimesh takes sqrt of tiny negative variances; harmless
        transforms, probs = trimesh.poses.compute_stable_poses(model.mesh, seed=0)
    order = np.argsort(-np.asarray(probs), kind="stable")[: int(n_max)]
    hull = _hull_vertices(model.mesh)
    out = []
    for i in order:
        T = np.array(transforms[i], dtype=np.float64)
        z_min = float((hull @ T[:3, :3].T + T[:3, 3])[:, 2].min())
        T[2, 3] -= z_min
        out.append((T, float(probs[i])))
    return out


def _point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Distance (float64) from points ``p`` (n, 3) to triangles ``tri`` (n, 3, 3), pairwise.

    Written here because both libraries fail on the sliver triangles booleans make: trimesh's
    barycentric closest point is off by tens of µm on them, Open3D's float32 query as well.
    Minimum of the three edge-segment distances and, when the projection falls inside, the
    plane distance; degenerate triangles reduce to their edges.
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    best = np.full(len(p), np.inf)
    for u, v in ((a, b), (b, c), (c, a)):
        e = v - u
        ee = np.einsum("ij,ij->i", e, e)
        t = np.clip(np.einsum("ij,ij->i", p - u, e) / np.where(ee > 0, ee, 1.0), 0.0, 1.0)
        best = np.minimum(best, np.linalg.norm(p - (u + t[:, None] * e), axis=1))
    n = np.cross(b - a, c - a)
    nn = np.linalg.norm(n, axis=1)
    ok = nn > 1e-300
    n = n / np.where(ok, nn, 1.0)[:, None]
    inside = ok.copy()
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("ij,ij->i", np.cross(v - u, p - u), n) >= 0.0
    plane = np.abs(np.einsum("ij,ij->i", p - a, n))
    return np.where(inside, np.minimum(best, plane), best)


def symmetry_error(mesh: trimesh.Trimesh, T: np.ndarray, n_points: int = 2000,
                   seed: int = 0, resolution: float = 1e-6) -> float:
    """Symmetric Hausdorff distance (metres, sampled) between ``mesh`` and ``T`` applied to it.

    Samples ``n_points`` on the surface, maps them by ``T`` and by ``T^-1`` and returns the
    largest distance to the surface. Zero (up to tessellation) when ``T`` is a symmetry.

    Open3D's BVH gives each point a nearby surface point, hence an upper bound of its distance
    (up to float32 rounding). Points are then settled exactly (float64) in decreasing order of
    that bound, against every triangle whose box meets the bounding ball (trimesh's R-tree),
    until no bound exceeds the best exact distance by more than ``resolution``. The result is
    an upper bound of the sampled maximum, at most ``resolution`` (metres) above it.
    """
    import open3d as o3d  # heavy import kept local: only this function needs it

    T = check_pose(T, name="T")
    points, _ = trimesh.sample.sample_surface(mesh, int(n_points), seed=seed)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, dtype=np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.faces, dtype=np.uint32)))
    triangles = np.asarray(mesh.triangles, dtype=np.float64)
    tree = mesh.triangles_tree
    worst = 0.0
    for M in (T, np.linalg.inv(T)):
        q = points @ M[:3, :3].T + M[:3, 3]
        near = scene.compute_closest_points(o3d.core.Tensor(q.astype(np.float32)))["points"]
        bound = np.linalg.norm(near.numpy().astype(np.float64) - q, axis=1)
        rounding = 8.0 * float(np.spacing(np.float32(np.abs(q).max() + 1e-12)))
        for i in np.argsort(-bound, kind="stable"):
            r = bound[i] + rounding
            if r <= worst + resolution:
                worst = max(worst, float(r))  # the unsettled rest is below this
                break
            cand = np.fromiter(tree.intersection(np.concatenate([q[i] - r, q[i] + r])), np.int64)
            d = _point_triangle_distance(np.broadcast_to(q[i], (len(cand), 3)), triangles[cand])
            worst = max(worst, float(d.min()))
    return worst


# --------------------------------------------------------------------------------------------
# Procedural parts
# --------------------------------------------------------------------------------------------


@dataclass
class LBracketParams:
    """L-shaped bent plate: a base leg and a shorter wall leg joined by a bend, through holes."""

    base_length: float = config.param(0.08, "outer length of the base leg (x)", lo=0.05, hi=0.12,
                                      unit="m")
    wall_ratio: float = config.param(0.6, "outer wall height / base length (< 1: legs differ)",
                                     lo=0.45, hi=0.85)
    width: float = config.param(0.05, "plate width (y)", lo=0.03, hi=0.08, unit="m")
    thickness: float = config.param(0.005, "plate thickness", lo=0.003, hi=0.008, unit="m")
    bend_ratio: float = config.param(1.0, "inner bend radius / thickness", lo=0.5, hi=2.0)
    n_holes_base: int = config.param(2, "through holes in the base leg, in a row along y",
                                     lo=1, hi=3)
    n_holes_wall: int = config.param(1, "through holes in the wall leg, in a row along y",
                                     lo=0, hi=2)
    hole_ratio: float = config.param(0.6, "hole diameter / largest diameter that fits",
                                     lo=0.35, hi=0.85)


@dataclass
class FlangeParams:
    """Disc with a raised hub on one side, a central bore and N bolt holes on a circle."""

    outer_diameter: float = config.param(0.1, "disc diameter", lo=0.06, hi=0.15, unit="m")
    thickness: float = config.param(0.01, "disc thickness", lo=0.006, hi=0.016, unit="m")
    hub_ratio: float = config.param(0.45, "hub diameter / disc diameter", lo=0.35, hi=0.55)
    hub_height: float = config.param(0.015, "hub height above the disc", lo=0.006, hi=0.03,
                                     unit="m")
    bore_ratio: float = config.param(0.55, "bore diameter / hub diameter", lo=0.35, hi=0.75)
    n_bolt_holes: int = config.param(6, "bolt holes on the bolt circle", lo=3, hi=8)
    bolt_hole_ratio: float = config.param(0.45, "bolt hole diameter / (disc - hub radius)",
                                          lo=0.3, hi=0.6)


@dataclass
class HexNutParams:
    """Hexagonal prism with a central bore and optional 30° chamfers on the corners."""

    across_flats: float = config.param(0.06, "width across flats", lo=0.04, hi=0.1, unit="m")
    height_ratio: float = config.param(0.8, "height / across flats", lo=0.5, hi=0.9)
    bore_ratio: float = config.param(0.55, "bore diameter / across flats", lo=0.45, hi=0.65)
    chamfer: str = config.param("both", "which faces have the corner chamfer",
                                choices=("both", "top", "none"))


@dataclass
class ConnectorHousingParams:
    """Rectangular block with a cavity open at the front, pin slots at the back, a latch ramp."""

    length: float = config.param(0.06, "block length along the mating direction (y)",
                                 lo=0.04, hi=0.1, unit="m")
    width: float = config.param(0.05, "block width (x)", lo=0.03, hi=0.08, unit="m")
    height: float = config.param(0.025, "block height (z), latch excluded", lo=0.015, hi=0.04,
                                 unit="m")
    wall: float = config.param(0.0025, "wall thickness", lo=0.0015, hi=0.004, unit="m")
    cavity_depth_ratio: float = config.param(0.7, "cavity depth / length", lo=0.5, hi=0.85)
    n_slots: int = config.param(3, "pin slots through the back wall", lo=0, hi=4)
    latch_length_ratio: float = config.param(0.3, "latch ramp length / block length",
                                             lo=0.2, hi=0.4)
    latch_width_ratio: float = config.param(0.3, "latch width / block width", lo=0.2, hi=0.4)
    latch_height: float = config.param(0.003, "latch ramp height", lo=0.002, hi=0.005, unit="m")


@dataclass
class TProfileParams:
    """Extruded T cross-section: flange on top, stem down, extruded along z."""

    flange_width: float = config.param(0.06, "flange (top bar) width (x)", lo=0.04, hi=0.1,
                                       unit="m")
    flange_thickness: float = config.param(0.008, "flange thickness", lo=0.004, hi=0.012,
                                           unit="m")
    height: float = config.param(0.05, "total height, flange included (y)", lo=0.03, hi=0.09,
                                 unit="m")
    stem_thickness: float = config.param(0.008, "stem thickness", lo=0.004, hi=0.012, unit="m")
    length: float = config.param(0.1, "extrusion length (z)", lo=0.05, hi=0.15, unit="m")
    root_radius: float = config.param(0.002, "fillet radius where stem meets flange",
                                      lo=0.0, hi=0.004, unit="m")


@dataclass
class BushingParams:
    """Flanged bushing: a tube with a collar at one end (continuous symmetry about its axis)."""

    outer_diameter: float = config.param(0.04, "tube outer diameter", lo=0.025, hi=0.07, unit="m")
    length: float = config.param(0.06, "overall length (z), collar included", lo=0.03, hi=0.1,
                                 unit="m")
    bore_ratio: float = config.param(0.6, "bore diameter / tube outer diameter", lo=0.4, hi=0.75)
    collar_ratio: float = config.param(1.4, "collar diameter / tube outer diameter",
                                       lo=1.2, hi=1.6)
    collar_thickness: float = config.param(0.006, "collar thickness", lo=0.003, hi=0.01,
                                           unit="m")


#: family name -> parameter dataclass (fields made with config.param: ranges, units, choices).
PART_FAMILIES: dict[str, type] = {
    "l_bracket": LBracketParams,
    "flange": FlangeParams,
    "hex_nut": HexNutParams,
    "connector_housing": ConnectorHousingParams,
    "t_profile": TProfileParams,
    "bushing": BushingParams,
}


def _draw_params(cls: type, rng: np.random.Generator | None) -> dict:
    """One value per field: uniform in [lo, hi] (floats rounded to 0.1 mm / 1e-4), or default.

    Every field is drawn whatever the caller gives, so fixing one parameter leaves the others
    of the same seed unchanged.
    """
    out = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if rng is None:
            out[f.name] = f.default
        elif meta.get("choices"):
            choices = meta["choices"]
            out[f.name] = choices[int(rng.integers(len(choices)))]
        elif isinstance(f.default, int):
            out[f.name] = int(rng.integers(meta["lo"], meta["hi"] + 1))
        else:
            out[f.name] = round(float(rng.uniform(meta["lo"], meta["hi"])), 4)
    return out


def make_part(family: str, seed: int | None = 0, *, name: str | None = None,
              **params) -> PartModel:
    """Build a procedural texture-less part with its symmetries.

    Parameters
    ----------
    family : str
        One of :data:`PART_FAMILIES`.
    seed : int or None
        Parameters not given are drawn uniformly in their ranges from this seed (same seed,
        identical vertex bytes). ``None`` uses the dataclass defaults instead.
    name : str, optional
        Default ``"<family>_<seed>"`` (``"<family>_default"`` for ``seed=None``).
    **params
        Fields of the family's parameter dataclass (metres / ratios), validated against their
        ranges.

    Returns
    -------
    PartModel
        Watertight mesh in metres, origin at the bounding-box centre (rotational parts: on the
        axis, at mid-height), symmetries derived from the construction; ``checksum`` hashes
        family, parameters, seed and generator version.
    """
    if family not in PART_FAMILIES:
        raise InputError("family", f"one of {sorted(PART_FAMILIES)}", repr(family))
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise InputError("seed", "an integer or None", repr(seed))
    cls = PART_FAMILIES[family]
    rng = None if seed is None else np.random.default_rng(int(seed))
    values = _draw_params(cls, rng)
    unknown = sorted(set(params) - set(values))
    if unknown:
        raise InputError(f"make_part({family!r})", f"parameters among {sorted(values)}",
                         f"unknown {unknown}")
    values.update(params)
    p = config.from_mapping(cls, values, source=f"make_part({family!r})")
    mesh, disc, cont = _BUILDERS[family](p)

    # Origin at the bbox centre; rotational builders already put the axis through the origin.
    center = mesh.bounds.mean(axis=0)
    mesh.apply_translation(-center)
    for s in cont:
        s["offset"] = s["offset"] - center
    disc = [_conjugate_translation(T, center) for T in disc]
    repair_mesh(mesh, name=f"make_part({family!r})")
    mesh.vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)

    desc = {"family": family, "params": dataclasses.asdict(p), "seed": seed,
            "generator": PROCEDURAL_GENERATOR_VERSION}
    checksum = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()
    return PartModel(
        name=name or f"{family}_{'default' if seed is None else int(seed)}",
        mesh=mesh,
        source=f"procedural:{family}",
        source_units="m",
        units_detected=False,
        checksum=checksum,
        symmetries_discrete=disc,
        symmetries_continuous=cont,
        params=dataclasses.asdict(p),
    )


def _conjugate_translation(T: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Express a symmetry built about the old origin in the frame shifted by ``-center``."""
    shift = make_pose(t=-center)
    return shift @ T @ make_pose(t=center)


def _rot_z(angle: float) -> np.ndarray:
    return make_pose(rotation_from_rotvec([0.0, 0.0, angle]))


def _rot_axis(axis, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return make_pose(rotation_from_rotvec(axis / np.linalg.norm(axis) * angle))


def _boolean(op: str, meshes: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    fn = {"union": trimesh.boolean.union, "difference": trimesh.boolean.difference,
          "intersection": trimesh.boolean.intersection}[op]
    return fn(meshes, engine="manifold")


def _sections(n_fold: int, at_least: int = 64) -> int:
    """Circle tessellation that is a multiple of ``n_fold`` so n-fold rotations stay exact."""
    return n_fold * math.ceil(at_least / n_fold)


def _build_l_bracket(p: LBracketParams):
    t = p.thickness
    ri = p.bend_ratio * t
    ro = ri + t
    a = p.base_length
    b = p.wall_ratio * p.base_length
    # Cross-section in (x, z): outer corner at the origin, bend centred at (ro, ro).
    arc = np.linspace(math.pi, 1.5 * math.pi, 17)
    outer = np.stack([ro + ro * np.cos(arc), ro + ro * np.sin(arc)], axis=1)  # (0,ro)->(ro,0)
    inner = np.stack([ro + ri * np.cos(arc[::-1]), ro + ri * np.sin(arc[::-1])], axis=1)
    ring = [*outer.tolist(), (a, 0.0), (a, t), *inner.tolist(), (t, b), (0.0, b)]
    section = shapely.geometry.Polygon(ring)
    body = trimesh.creation.extrude_polygon(section, p.width)  # along +z
    # (x, y=z_section, z=extrusion) -> (x, y=-extrusion, z=z_section), centred on y.
    body.apply_transform(_rot_axis([1, 0, 0], math.pi / 2))
    body.apply_translation([0.0, p.width / 2, 0.0])

    cutters = []
    base_flat = (ro, a)
    wall_flat = (ro, b)
    for n, flat, vertical in ((p.n_holes_base, base_flat, True),
                              (p.n_holes_wall, wall_flat, False)):
        if n == 0:
            continue
        pitch = p.width / n
        room = min(pitch, flat[1] - flat[0])
        radius = 0.5 * p.hole_ratio * room
        along = 0.5 * (flat[0] + flat[1])
        for k in range(n):
            y = -p.width / 2 + pitch * (k + 0.5)
            cyl = trimesh.creation.cylinder(radius=radius, height=4 * t, sections=32)
            if vertical:  # through the base: axis z at (x=along, y)
                cyl.apply_translation([along, y, t / 2])
            else:  # through the wall: axis x at (y, z=along)
                cyl.apply_transform(_rot_axis([0, 1, 0], math.pi / 2))
                cyl.apply_translation([t / 2, y, along])
            cutters.append(cyl)
    mesh = _boolean("difference", [body, *cutters]) if cutters else body
    return mesh, [], []


def _build_flange(p: FlangeParams):
    n = p.n_bolt_holes
    R = p.outer_diameter / 2
    r_hub = p.hub_ratio * R
    r_bore = p.bore_ratio * r_hub
    sec = _sections(n, 96)
    disc = trimesh.creation.cylinder(radius=R, height=p.thickness, sections=sec)
    disc.apply_translation([0, 0, p.thickness / 2])
    hub_h = p.thickness + p.hub_height
    hub = trimesh.creation.cylinder(radius=r_hub, height=hub_h, sections=sec)
    hub.apply_translation([0, 0, hub_h / 2])
    body = _boolean("union", [disc, hub])
    bore = trimesh.creation.cylinder(radius=r_bore, height=3 * hub_h, sections=sec)
    r_circle = 0.5 * (r_hub + R)
    r_hole = 0.5 * p.bolt_hole_ratio * (R - r_hub)
    hole0 = trimesh.creation.cylinder(radius=r_hole, height=3 * p.thickness, sections=32)
    hole0.apply_translation([r_circle, 0, 0])
    # Each hole is the first one rotated, so the N-fold symmetry is exact in the tessellation.
    holes = [hole0.copy().apply_transform(_rot_z(2 * math.pi * k / n)) for k in range(n)]
    mesh = _boolean("difference", [body, bore, *holes])
    mesh.apply_translation([0, 0, -hub_h / 2])
    disc_syms = [_rot_z(2 * math.pi * k / n) for k in range(1, n)]
    return mesh, disc_syms, []


def _build_hex_nut(p: HexNutParams):
    af = p.across_flats
    h = p.height_ratio * af
    r_corner = af / math.sqrt(3.0)
    angles = np.arange(6) * math.pi / 3
    hexagon = shapely.geometry.Polygon(np.stack([r_corner * np.cos(angles),
                                                 r_corner * np.sin(angles)], axis=1))
    body = trimesh.creation.extrude_polygon(hexagon, h)
    body.apply_translation([0, 0, -h / 2])
    sec = 48  # multiple of 12: 60° rotations and flips about 30°-spaced axes map it onto itself
    if p.chamfer != "none":
        # Solid of revolution whose cone cuts the corners at 30° to the face, starting on a
        # circle of 0.95 x across-flats (usual nut chamfer).
        r0 = 0.475 * af
        r_big = 1.1 * r_corner
        e = 0.1 * h  # overshoot beyond the faces keeps the boolean free of coplanar faces
        slope = math.tan(math.radians(30.0))
        top = [(r_big, h / 2 - (r_big - r0) * slope), (r0 - e / slope, h / 2 + e)]
        if p.chamfer == "both":
            bottom = [(r0 - e / slope, -h / 2 - e), (r_big, -h / 2 + (r_big - r0) * slope)]
        else:
            bottom = [(r_big, -h / 2 - e)]
        profile = [(0.0, -h / 2 - e), *bottom, *top, (0.0, h / 2 + e)]
        cone = trimesh.creation.revolve(np.asarray(profile), sections=sec)
        body = _boolean("intersection", [body, cone])
    bore = trimesh.creation.cylinder(radius=p.bore_ratio * af / 2, height=3 * h, sections=sec)
    mesh = _boolean("difference", [body, bore])
    syms = [_rot_z(k * math.pi / 3) for k in range(1, 6)]
    if p.chamfer != "top":
        syms += [_rot_axis([math.cos(k * math.pi / 6), math.sin(k * math.pi / 6), 0.0], math.pi)
                 for k in range(6)]
    return mesh, syms, []


def _build_connector_housing(p: ConnectorHousingParams):
    L, W, H, w = p.length, p.width, p.height, p.wall
    block = trimesh.creation.box((W, L, H))
    depth = p.cavity_depth_ratio * L
    cavity = trimesh.creation.box((W - 2 * w, depth + w, H - 2 * w))
    cavity.apply_translation([0, L / 2 - depth / 2 + w / 2, 0])  # open at the front (+y)
    cutters = [cavity]
    back_wall = L - depth
    if p.n_slots:
        pitch = (W - 2 * w) / p.n_slots
        slot_w = 0.4 * pitch
        slot_h = 0.35 * (H - 2 * w)
        for k in range(p.n_slots):
            x = -(W - 2 * w) / 2 + pitch * (k + 0.5)
            slot = trimesh.creation.box((slot_w, 3 * back_wall, slot_h))
            slot.apply_translation([x, -L / 2, 0])
            cutters.append(slot)
    body = _boolean("difference", [block, *cutters])
    # Latch: a ramp on top near the front, rising towards the back (wedge in the y-z plane).
    ll = p.latch_length_ratio * L
    y0 = L / 2 - 0.1 * L - ll
    overlap = 0.2 * w  # sink the ramp into the roof so the union is a single solid
    wedge = shapely.geometry.Polygon([(y0, -overlap), (y0 + ll, -overlap), (y0 + ll, 0.0),
                                      (y0, p.latch_height)])
    latch = trimesh.creation.extrude_polygon(wedge, p.latch_width_ratio * W)
    # (y, z, x) -> (x, y, z): extrusion along +z becomes x, polygon (u, v) becomes (y, z).
    latch.apply_transform(np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]],
                                   dtype=np.float64))
    latch.apply_translation([-p.latch_width_ratio * W / 2, 0, H / 2])
    mesh = _boolean("union", [body, latch])
    return mesh, [], []


def _build_t_profile(p: TProfileParams):
    fw, ft, H, st = p.flange_width, p.flange_thickness, p.height, p.stem_thickness
    flange = shapely.geometry.box(-fw / 2, H - ft, fw / 2, H)
    stem = shapely.geometry.box(-st / 2, 0.0, st / 2, H - ft / 2)
    section = flange.union(stem)
    if p.root_radius > 0:
        # buffer(+r) then buffer(-r) rounds only the concave corners (the stem/flange roots).
        section = section.buffer(p.root_radius, quad_segs=8, join_style="round").buffer(
            -p.root_radius, quad_segs=8, join_style="round")
        section = shapely.geometry.polygon.orient(section.simplify(0.0))
    mesh = trimesh.creation.extrude_polygon(section, p.length)
    mesh.apply_translation([0, -H / 2, -p.length / 2])
    return mesh, [_rot_axis([0, 1, 0], math.pi)], []


def _build_bushing(p: BushingParams):
    r_out = p.outer_diameter / 2
    r_bore = p.bore_ratio * r_out
    r_collar = p.collar_ratio * r_out
    tc, L = p.collar_thickness, p.length
    profile = np.array([(r_bore, 0.0), (r_collar, 0.0), (r_collar, tc), (r_out, tc),
                        (r_out, L), (r_bore, L), (r_bore, 0.0)])
    # 160 sections: the chord sag at the largest collar (56 mm radius) is 0.011 mm, so any
    # rotation about z maps the tessellated surface onto itself within 0.02 mm.
    mesh = trimesh.creation.revolve(profile, sections=160)
    mesh.apply_translation([0.0, 0.0, -L / 2])
    return mesh, [], [{"axis": np.array([0.0, 0.0, 1.0]), "offset": np.zeros(3)}]


_BUILDERS = {
    "l_bracket": _build_l_bracket,
    "flange": _build_flange,
    "hex_nut": _build_hex_nut,
    "connector_housing": _build_connector_housing,
    "t_profile": _build_t_profile,
    "bushing": _build_bushing,
}
