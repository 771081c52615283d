"""BOP-format dataset writer and reader.

Follows the public BOP format (bop_toolkit ``docs/bop_datasets_format.md``) exactly, so what we
write loads in bop_toolkit and any BOP dataset written to that spec loads here. Files keep BOP's
units (millimetres; depth PNG values times ``depth_scale`` give millimetres); the API is in metres.

Layout::

    DATASET/camera.json                       {cx, cy, fx, fy, height, width, depth_scale}
    DATASET/models/obj_{obj_id:06d}.ply       mesh in mm
    DATASET/models/models_info.json           {"<obj_id>": {diameter, min_x, ..., size_z, [symmetries_*]}}
    DATASET/<split>/{scene_id:06d}/
        scene_camera.json                     {"<im_id>": {cam_K, depth_scale, [cam_R_w2c, cam_t_w2c]}}
        scene_gt.json                         {"<im_id>": [{cam_R_m2c, cam_t_m2c, obj_id}, ...]}
        scene_gt_info.json                    {"<im_id>": [{bbox_obj, bbox_visib, px_count_*, visib_fract}]}
        rgb/{im_id:06d}.png|jpg  or  gray/{im_id:06d}.png|tif
        depth/{im_id:06d}.png                 uint16, depth_mm = value * depth_scale
        mask/{im_id:06d}_{gt_id:06d}.png      uint8 0/255, full silhouette (clipped to the image)
        mask_visib/{im_id:06d}_{gt_id:06d}.png  uint8 0/255, visible part

JSON files are written the way bop_toolkit's ``inout.save_json`` writes them (one image per line,
keys sorted), with every float at full precision (``repr``), atomically (temporary file + rename).
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.geometry import check_pose, make_pose
from weak_template_ros.image_io import read_image
from weak_template_ros.models import PartModel, load_mesh, save_mesh

MM_PER_M = 1000.0
#: bbox written by bop_toolkit's calc_gt_info when nothing of the object is visible.
INVALID_BBOX = (-1, -1, -1, -1)
#: Image file extensions the reader looks for, in this order (BOP uses png, jpg and tif).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_UINT16_MAX = np.iinfo(np.uint16).max
# Rotations in published BOP files carry 7-8 significant digits; this tolerance accepts them and
# still rejects what is not a rotation (wrong order, transposed translation, garbage).
_READ_ROTATION_ATOL = 1e-3
_SCENE_CACHE_SIZE = 4


@dataclass
class ObjectAnnotation:
    """One ground-truth object instance in a frame.

    Parameters
    ----------
    obj_id : int
        BOP object id (>= 1), the ``NNNNNN`` of ``models/obj_NNNNNN.ply``.
    T_cam_obj : (4, 4) float array
        Object-to-camera pose, metres.
    mask : (H, W) bool array or None
        Full silhouette clipped to the image (occlusion ignored). None when read from a dataset
        without ``mask/`` files or with ``masks=False``.
    mask_visib : (H, W) bool array or None
        Visible part of the silhouette (subset of ``mask``).
    px_count_all : int, optional
        Pixels of the whole silhouette including the part outside the image (truncated objects);
        None means ``mask.sum()`` (object fully inside the image).
    bbox_obj : (x, y, w, h), optional
        Bounding box of the whole silhouette in pixels, may extend beyond the image; None means
        computed from ``mask``.
    raw_gt, raw_info : dict, optional
        The exact ``scene_gt.json`` / ``scene_gt_info.json`` records when read from disk.
    """

    obj_id: int
    T_cam_obj: np.ndarray
    mask: np.ndarray | None
    mask_visib: np.ndarray | None
    px_count_all: int | None = None
    bbox_obj: tuple | None = None
    raw_gt: dict | None = None
    raw_info: dict | None = None


@dataclass
class BopFrame:
    """One image of a BOP scene with its annotations.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB array, or (H, W) for gray datasets
    depth : (H, W) float32 array or None
        Depth in metres, 0 = invalid; None for RGB-only datasets.
    camera : CameraIntrinsics
    objects : list of ObjectAnnotation
    depth_scale : float
        Millimetres per depth PNG unit (BOP's ``depth_scale``; 0.1 gives 0.1 mm steps and a
        6.5535 m range).
    T_cam_world : (4, 4) float array, optional
        World-to-camera pose in metres (BOP's ``cam_R_w2c``, ``cam_t_w2c``).
    raw_camera : dict, optional
        The exact ``scene_camera.json`` record when read from disk.
    scene_id, im_id : int
    """

    rgb: np.ndarray
    depth: np.ndarray | None
    camera: CameraIntrinsics
    objects: list[ObjectAnnotation]
    depth_scale: float = 0.1
    T_cam_world: np.ndarray | None = None
    raw_camera: dict | None = None
    scene_id: int = 0
    im_id: int = 0


# ----------------------------------------------------------------------------------------------
# Pure helpers: depth quantisation and ground-truth info


def bbox_from_mask(mask: np.ndarray) -> tuple[int, int, int, int]:
    """BOP bounding box ``(x, y, w, h)`` of the nonzero pixels of ``mask``.

    As bop_toolkit's ``misc.calc_2d_bbox``: ``w = xmax - xmin`` and ``h = ymax - ymin`` (no +1,
    so a single pixel has w = h = 0). ``(-1, -1, -1, -1)`` for an empty mask.
    """
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return INVALID_BBOX
    x0, y0 = int(xs.min()), int(ys.min())
    return (x0, y0, int(xs.max()) - x0, int(ys.max()) - y0)


def depth_to_png_units(depth: np.ndarray, depth_scale: float, name: str = "depth") -> np.ndarray:
    """Quantise depth in metres to BOP depth PNG units: ``round(depth_m * 1000 / depth_scale)``.

    Parameters
    ----------
    depth : (H, W) float array
        Metres; 0, negative, NaN or inf are invalid and stored as 0.
    depth_scale : float
        Millimetres per PNG unit, > 0.
    name : str
        Names the image in the error message.

    Returns
    -------
    (H, W) uint16 array

    Raises
    ------
    InputError
        When a valid depth does not fit in uint16 at this ``depth_scale``.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError(name, "a (H, W) float depth image in metres", describe_array(depth))
    _check_depth_scale(depth_scale, name)
    d = depth.astype(np.float64)
    valid = np.isfinite(d) & (d > 0)
    units = np.zeros(d.shape, np.float64)
    units[valid] = np.round(d[valid] * MM_PER_M / depth_scale)
    if valid.any() and units.max() > _UINT16_MAX:
        max_m = _UINT16_MAX * depth_scale / MM_PER_M
        raise InputError(name, f"depth <= {max_m:g} m (uint16 PNG at depth_scale {depth_scale} mm)",
                         f"{float(d[valid].max()):g} m")
    return units.astype(np.uint16)


def depth_from_png_units(units: np.ndarray, depth_scale: float) -> np.ndarray:
    """Depth PNG values to metres, float32 (0 stays 0 = invalid)."""
    return (np.asarray(units, np.float64) * (depth_scale / MM_PER_M)).astype(np.float32)


def compute_gt_info(obj: ObjectAnnotation, depth_valid: np.ndarray | None) -> dict:
    """The ``scene_gt_info.json`` record of one object, as bop_toolkit's ``calc_gt_info`` does.

    Parameters
    ----------
    obj : ObjectAnnotation
        With ``mask`` and ``mask_visib``; ``px_count_all`` / ``bbox_obj`` when the silhouette
        extends beyond the image.
    depth_valid : (H, W) bool array or None
        Pixels with a valid depth measurement (non-zero stored depth); None for RGB-only data
        (then ``px_count_valid`` is 0).

    Returns
    -------
    dict
        ``bbox_obj``, ``bbox_visib`` (``[-1, -1, -1, -1]`` when nothing is visible; calc_gt_info
        also writes ``bbox_obj`` as -1 then), ``px_count_all``, ``px_count_valid``,
        ``px_count_visib``, ``visib_fract`` (visib / all, 0 when all is 0).
    """
    mask = np.asarray(obj.mask, dtype=bool)
    visib = np.asarray(obj.mask_visib, dtype=bool)
    px_all = int(mask.sum()) if obj.px_count_all is None else int(obj.px_count_all)
    px_valid = 0 if depth_valid is None else int(np.count_nonzero(mask & depth_valid))
    px_visib = int(np.count_nonzero(visib))
    visib_fract = px_visib / float(px_all) if px_all > 0 else 0.0
    bbox_obj, bbox_visib = INVALID_BBOX, INVALID_BBOX
    if px_visib > 0:
        bbox_obj = bbox_from_mask(mask) if obj.bbox_obj is None else obj.bbox_obj
        bbox_visib = bbox_from_mask(visib)
    return {
        "bbox_obj": [int(v) for v in bbox_obj],
        "bbox_visib": [int(v) for v in bbox_visib],
        "px_count_all": px_all,
        "px_count_valid": px_valid,
        "px_count_visib": px_visib,
        "visib_fract": float(visib_fract),
    }


# ----------------------------------------------------------------------------------------------
# File helpers


def _check_depth_scale(depth_scale, name: str) -> None:
    if isinstance(depth_scale, bool) or not isinstance(depth_scale, (int, float, np.floating)) \
            or not np.isfinite(depth_scale) or depth_scale <= 0:
        raise InputError(f"{name} depth_scale", "a positive number of mm per PNG unit",
                         repr(depth_scale))


def _json_key(k) -> tuple:
    # Image / object ids sort numerically, other keys alphabetically after them.
    return (0, int(k), "") if isinstance(k, int) or str(k).isdigit() else (1, 0, str(k))


def write_json_atomic(path: Path, content: Mapping) -> None:
    """Write ``content`` as bop_toolkit's ``save_json`` does, atomically.

    One top-level entry per line with its value's keys sorted, top-level keys sorted (numerically
    for ids), floats at full precision; NaN/inf are refused (not JSON).
    """
    path = Path(path)
    lines = [f"  {json.dumps(str(k))}: {json.dumps(v, sort_keys=True, allow_nan=False)}"
             for k, v in sorted(content.items(), key=lambda kv: _json_key(kv[0]))]
    text = "{\n" + ",\n".join(lines) + ("\n}" if lines else "}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name beside the target (same file system, so os.replace is atomic); open(..., "x")
    # keeps the user's umask, which tempfile.mkstemp's 0600 would not.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(str(path), what, "no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(str(path), f"{what} (valid JSON)", f"{type(e).__name__}: {e}") from e


def _is_number(v) -> bool:
    # NumPy scalars count (callers pass np.int64 counts); JSON gives int/float only.
    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)) and bool(np.isfinite(v)))


def _number(v, where: str, what: str = "a finite number") -> float:
    if not _is_number(v):
        raise InputError(where, what, repr(v))
    return float(v)


def _integer(v, where: str, what: str = "an integer") -> int:
    # BOP files written by other tools sometimes store integers as floats (1.0).
    if not _is_number(v) or float(v) != int(v):
        raise InputError(where, what, repr(v))
    return int(v)


def _numbers(v, n: int, where: str, what: str) -> np.ndarray:
    if not isinstance(v, list) or len(v) != n or not all(_is_number(x) for x in v):
        got = f"{len(v)} values" if isinstance(v, list) else repr(v)
        if isinstance(v, list) and len(v) == n:
            got = f"non-numeric or non-finite values {v!r}"
        raise InputError(where, f"{n} numbers ({what})", got)
    return np.asarray(v, dtype=np.float64)


def _int_keys(d, path: Path, what: str) -> dict[int, Any]:
    if not isinstance(d, dict):
        raise InputError(str(path), f"a JSON object {what}", type(d).__name__)
    out = {}
    for k, v in d.items():
        if not str(k).lstrip("-").isdigit():
            raise InputError(str(path), f"image ids as keys ({what})", repr(k))
        out[int(k)] = v
    return out


def _find_image(scene_dir: Path, folders: tuple[str, ...], stem: str) -> Path | None:
    for folder in folders:
        for ext in IMAGE_EXTENSIONS:
            p = scene_dir / folder / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _imwrite(path: Path, img: np.ndarray, params: list[int]) -> None:
    if not cv2.imwrite(str(path), img, params):
        raise OSError(f"cv2.imwrite could not write {path}")


def _mask_from_file(path: Path, shape: tuple[int, int]) -> np.ndarray:
    m = read_image(path, str(path), rgb=False)
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != shape:
        raise InputError(str(path), f"a mask of {shape[1]}x{shape[0]} (image size)",
                         describe_array(m))
    return m > 0


# ----------------------------------------------------------------------------------------------
# Writer


@dataclass
class _SceneRecords:
    camera: dict[int, dict]
    gt: dict[int, list]
    info: dict[int, list]


class BopWriter:
    """Write frames, camera and models of one split of a BOP dataset.

    Images and masks are written at once; the per-scene JSON files are kept in memory and
    written (atomically) by :meth:`close` / :meth:`flush` or at the end of a ``with`` block.
    Writing into an existing scene keeps its frames (an ``im_id`` written again replaces the old
    one).

    Parameters
    ----------
    root : path
        Dataset folder (created if needed).
    split : str
        Split folder name, e.g. ``"test"``, ``"train_pbr"``.
    rgb_format : {"png", "jpg"}
        File format of colour/gray images (BOP's PBR training sets use jpg).
    jpg_quality : int
        JPEG quality when ``rgb_format="jpg"`` (bop_toolkit uses 95).

    Examples
    --------
    >>> with BopWriter("out/ds", split="test") as w:            # doctest: +SKIP
    ...     w.write_camera(camera, depth_scale=0.1)
    ...     w.write_frame(0, 0, frame)
    """

    def __init__(self, root, split: str = "test", *, rgb_format: str = "png",
                 jpg_quality: int = 95):
        if not isinstance(split, str) or not split or any(c in split for c in "/\\") \
                or split.startswith((".", "models")):
            raise InputError("split", "a folder name such as 'test' or 'train_pbr' (not models*)",
                             repr(split))
        if rgb_format not in ("png", "jpg"):
            raise InputError("rgb_format", "one of ['png', 'jpg']", repr(rgb_format))
        if isinstance(jpg_quality, bool) or not isinstance(jpg_quality, int) \
                or not 0 <= jpg_quality <= 100:
            raise InputError("jpg_quality", "an integer in [0, 100]", repr(jpg_quality))
        self.root = Path(root)
        self.split = split
        self.rgb_format = rgb_format
        self.jpg_quality = jpg_quality
        self._scenes: dict[int, _SceneRecords] = {}
        self._dirty: set[int] = set()
        self._made_dirs: set[Path] = set()
        self._first_camera: tuple[CameraIntrinsics, float] | None = None

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> BopWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Write the per-scene JSON files (and camera.json from the first frame if absent)."""
        self.flush()

    def flush(self) -> None:
        """Write the JSON files of every scene changed since the last flush."""
        for scene_id in sorted(self._dirty):
            rec = self._scenes[scene_id]
            d = self._scene_dir(scene_id)
            write_json_atomic(d / "scene_camera.json", rec.camera)
            write_json_atomic(d / "scene_gt.json", rec.gt)
            write_json_atomic(d / "scene_gt_info.json", rec.info)
        self._dirty.clear()
        if self._first_camera is not None and not (self.root / "camera.json").exists():
            self.write_camera(*self._first_camera)

    # -- dataset-level files --------------------------------------------------------------------
    def write_camera(self, camera: CameraIntrinsics, depth_scale: float = 0.1) -> None:
        """Write ``camera.json`` (the sensor's nominal intrinsics and depth scale)."""
        if not isinstance(camera, CameraIntrinsics):
            raise InputError("camera", "a CameraIntrinsics", type(camera).__name__)
        _check_depth_scale(depth_scale, "camera.json")
        write_json_atomic(self.root / "camera.json", {
            "cx": float(camera.cx), "cy": float(camera.cy), "depth_scale": float(depth_scale),
            "fx": float(camera.fx), "fy": float(camera.fy),
            "height": int(camera.height), "width": int(camera.width),
        })

    def write_models(self, models: Mapping[int, PartModel]) -> None:
        """Write ``models/obj_NNNNNN.ply`` (mm) and merge their entries into ``models_info.json``.

        Parameters
        ----------
        models : mapping obj_id -> PartModel
            Meshes in metres (``.mesh``) with ``.models_info()`` giving the BOP entry in mm.
        """
        models_dir = self.root / "models"
        models_dir.mkdir(parents=True, exist_ok=True)
        info_path = models_dir / "models_info.json"
        info = {}
        if info_path.exists():
            info = _int_keys(_load_json(info_path, "models_info"), info_path, "obj_id -> info")
        for obj_id, model in models.items():
            obj_id = _integer(obj_id, "models obj_id", "a positive integer object id")
            if obj_id < 1:
                raise InputError("models obj_id", "a positive integer object id", obj_id)
            save_mesh(model, models_dir / f"obj_{obj_id:06d}.ply", units="mm")
            info[obj_id] = model.models_info()
        write_json_atomic(info_path, info)

    # -- frames ---------------------------------------------------------------------------------
    def write_frame(self, scene_id: int, im_id: int, frame: BopFrame) -> None:
        """Write the images and masks of one frame and record its JSON entries.

        Raises
        ------
        InputError
            Naming the frame and field for a wrong image size/dtype, a non-rigid pose, a mask
            that does not match, or depth that overflows uint16 at ``frame.depth_scale``.
        """
        name = f"frame (scene {scene_id}, im {im_id})"
        for label, v in (("scene_id", scene_id), ("im_id", im_id)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise InputError(f"{name} {label}", "a non-negative integer", repr(v))
        scene_id, im_id = int(scene_id), int(im_id)
        cam = frame.camera
        if not isinstance(cam, CameraIntrinsics):
            raise InputError(f"{name} camera", "a CameraIntrinsics", type(cam).__name__)
        _check_depth_scale(frame.depth_scale, name)
        rgb = np.asarray(frame.rgb)
        if rgb.dtype != np.uint8 or not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)):
            raise InputError(f"{name} rgb", "a (H, W, 3) RGB or (H, W) gray uint8 image",
                             describe_array(rgb))
        cam.check_image(rgb, f"{name} rgb")
        depth_units = None
        if frame.depth is not None:
            cam.check_image(frame.depth, f"{name} depth")
            depth_units = depth_to_png_units(frame.depth, frame.depth_scale, f"{name} depth")
        cam_rec = {"cam_K": cam.K.reshape(-1).tolist(), "depth_scale": float(frame.depth_scale)}
        if frame.T_cam_world is not None:
            T = check_pose(frame.T_cam_world, f"{name} T_cam_world")
            cam_rec["cam_R_w2c"] = T[:3, :3].reshape(-1).tolist()
            cam_rec["cam_t_w2c"] = (T[:3, 3] * MM_PER_M).tolist()
        depth_valid = None if depth_units is None else depth_units > 0
        gt_recs, info_recs, masks = [], [], []
        for gt_id, obj in enumerate(frame.objects):
            where = f"{name} object {gt_id}"
            gt_recs.append(_gt_record(obj, where))
            mask, visib = _check_object_masks(obj, cam, where)
            info_recs.append(compute_gt_info(obj, depth_valid))
            masks.append((mask, visib))

        scene = self._scene(scene_id)
        d = self._scene_dir(scene_id)
        if im_id in scene.camera:  # rewritten frame: drop masks of objects it no longer has
            for folder in ("mask", "mask_visib"):
                for p in (d / folder).glob(f"{im_id:06d}_*.png"):
                    p.unlink()
        stem = f"{im_id:06d}"
        if rgb.ndim == 2:
            img_dir, img = self._dir(d / "gray"), rgb
        else:
            img_dir, img = self._dir(d / "rgb"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.rgb_format == "jpg":
            _imwrite(img_dir / f"{stem}.jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpg_quality])
        else:
            _imwrite(img_dir / f"{stem}.png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
        if depth_units is not None:
            _imwrite(self._dir(d / "depth") / f"{stem}.png", depth_units, png)
        for gt_id, (mask, visib) in enumerate(masks):
            mask_name = f"{stem}_{gt_id:06d}.png"
            _imwrite(self._dir(d / "mask") / mask_name, mask.astype(np.uint8) * 255, png)
            _imwrite(self._dir(d / "mask_visib") / mask_name, visib.astype(np.uint8) * 255, png)
        scene.camera[im_id] = cam_rec
        scene.gt[im_id] = gt_recs
        scene.info[im_id] = info_recs
        self._dirty.add(scene_id)
        if self._first_camera is None:
            self._first_camera = (cam, float(frame.depth_scale))

    # -- internals ------------------------------------------------------------------------------
    def _scene_dir(self, scene_id: int) -> Path:
        return self.root / self.split / f"{scene_id:06d}"

    def _dir(self, path: Path) -> Path:
        if path not in self._made_dirs:
            path.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(path)
        return path

    def _scene(self, scene_id: int) -> _SceneRecords:
        if scene_id not in self._scenes:
            d = self._scene_dir(scene_id)
            parts = []
            for fname in ("scene_camera.json", "scene_gt.json", "scene_gt_info.json"):
                p = d / fname
                parts.append(_int_keys(_load_json(p, fname), p, "im_id -> records")
                             if p.exists() else {})
            self._scenes[scene_id] = _SceneRecords(*parts)
        return self._scenes[scene_id]


def _gt_record(obj: ObjectAnnotation, where: str) -> dict:
    if isinstance(obj.obj_id, bool) or not isinstance(obj.obj_id, (int, np.integer)) \
            or obj.obj_id < 1:
        raise InputError(f"{where} obj_id", "a positive integer (BOP object id)", repr(obj.obj_id))
    T = check_pose(obj.T_cam_obj, f"{where} T_cam_obj")
    return {"cam_R_m2c": T[:3, :3].reshape(-1).tolist(),
            "cam_t_m2c": (T[:3, 3] * MM_PER_M).tolist(), "obj_id": int(obj.obj_id)}


def _check_object_masks(obj: ObjectAnnotation, cam: CameraIntrinsics, where: str):
    masks = []
    for label in ("mask", "mask_visib"):
        m = getattr(obj, label)
        if m is None:
            raise InputError(f"{where} {label}", "a (H, W) bool mask (needed for gt_info)", None)
        m = np.asarray(m)
        if m.ndim != 2:
            raise InputError(f"{where} {label}", "a (H, W) bool mask", describe_array(m))
        cam.check_image(m, f"{where} {label}")
        masks.append(m.astype(bool))
    mask, visib = masks
    if np.any(visib & ~mask):
        raise InputError(f"{where} mask_visib", "a subset of mask (visible part of the silhouette)",
                         f"{int(np.count_nonzero(visib & ~mask))} pixels outside mask")
    if obj.px_count_all is not None:
        n_in = int(np.count_nonzero(mask))
        if _integer(obj.px_count_all, f"{where} px_count_all") < n_in:
            raise InputError(f"{where} px_count_all",
                             f">= the {n_in} silhouette pixels inside the image", obj.px_count_all)
    if obj.bbox_obj is not None:
        b = list(obj.bbox_obj)
        if len(b) != 4 or not all(_is_number(v) and float(v) == int(v) for v in b) \
                or (min(b[2], b[3]) < 0 and tuple(b) != INVALID_BBOX):
            raise InputError(f"{where} bbox_obj", "(x, y, w, h) integers with w, h >= 0",
                             repr(obj.bbox_obj))
    return mask, visib


# ----------------------------------------------------------------------------------------------
# Reader


@dataclass
class _SceneData:
    camera: dict[int, dict]
    gt: dict[int, list]
    info: dict[int, list] | None
    camera_path: Path
    gt_path: Path
    info_path: Path


class BopDataset:
    """Read a BOP dataset (ours or any written to the BOP spec).

    The layout is checked on construction (``camera.json``, ``models/models_info.json`` when
    ``models/`` exists, ``scene_camera.json`` and ``scene_gt.json`` in every scene folder); a
    scene's JSON files are parsed and checked field by field on first use. Tolerated: extra keys,
    keys in any order, integers written as floats, jpg/tif images, ``gray/`` instead of ``rgb/``,
    and the optional ``scene_gt_info.json``, ``mask*/``, ``depth/`` (then ``depth`` is None) and
    ``models*/`` folders.

    Parameters
    ----------
    root : path
        The dataset folder (the one holding ``camera.json``).

    Attributes
    ----------
    camera : CameraIntrinsics
        From ``camera.json``.
    depth_scale : float or None
        ``camera.json``'s depth scale (mm per PNG unit), None if absent.
    models_info : dict[int, dict]
        ``models_info.json`` (mm, as in the file), empty without ``models/``.

    Raises
    ------
    InputError
        Naming the missing or malformed file and field.
    """

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(str(self.root), "a BOP dataset folder", "no such folder")
        cam_path = self.root / "camera.json"
        cam = _load_json(cam_path, "BOP camera.json with cx, cy, fx, fy, height, width")
        if not isinstance(cam, dict):
            raise InputError(str(cam_path), "a JSON object", type(cam).__name__)
        vals = {}
        for key in ("cx", "cy", "fx", "fy", "height", "width"):
            if key not in cam:
                raise InputError(f"{cam_path}: {key}", "a number (camera.json field)", "missing")
            vals[key] = _number(cam[key], f"{cam_path}: {key}")
        try:
            self.camera = CameraIntrinsics(vals["fx"], vals["fy"], vals["cx"], vals["cy"],
                                           vals["width"], vals["height"])
        except InputError as e:
            raise InputError(f"{cam_path}: {e.name}", e.expected, e.got) from e
        self.depth_scale = (_number(cam["depth_scale"], f"{cam_path}: depth_scale")
                            if "depth_scale" in cam else None)

        self.models_info: dict[int, dict] = {}
        models_dir = self.root / "models"
        if models_dir.is_dir():
            info_path = models_dir / "models_info.json"
            raw = _load_json(info_path, "models_info.json (obj_id -> diameter, min_*, size_*)")
            self.models_info = dict(sorted(_int_keys(raw, info_path, "obj_id -> info").items()))

        self._scene_dirs: dict[str, dict[int, Path]] = {}
        for split_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if split_dir.name.startswith((".", "models")):
                continue
            scenes = {int(p.name): p for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit()}
            if not scenes:
                continue
            for scene_dir in scenes.values():
                for fname in ("scene_camera.json", "scene_gt.json"):
                    if not (scene_dir / fname).is_file():
                        raise InputError(str(scene_dir / fname),
                                         f"{fname} in every scene folder (BOP layout)",
                                         "no such file")
            self._scene_dirs[split_dir.name] = dict(sorted(scenes.items()))
        self._cache: OrderedDict[tuple[str, int], _SceneData] = OrderedDict()

    def __repr__(self) -> str:
        return f"BopDataset({str(self.root)!r}, splits={self.splits()})"

    # -- listing --------------------------------------------------------------------------------
    def splits(self) -> list[str]:
        """Names of the split folders that hold scenes, sorted."""
        return list(self._scene_dirs)

    def scene_ids(self, split: str) -> list[int]:
        """Scene ids of ``split``, sorted."""
        return list(self._split(split))

    def im_ids(self, split: str, scene_id: int) -> list[int]:
        """Image ids of a scene (the keys of its ``scene_camera.json``), sorted."""
        return sorted(self._scene(split, scene_id).camera)

    def scene_gt_info(self, split: str, scene_id: int) -> dict[int, list[dict]]:
        """``scene_gt_info.json`` of a scene (im_id -> per-instance records), {} when absent.

        Reads no image: for dataset statistics over many frames.
        """
        return dict(self._scene(split, scene_id).info or {})

    def iter_frames(self, split: str, masks: bool = True) -> Iterator[BopFrame]:
        """Every frame of ``split``, scene by scene, image by image."""
        for scene_id in self.scene_ids(split):
            for im_id in self.im_ids(split, scene_id):
                yield self.load_frame(split, scene_id, im_id, masks=masks)

    # -- loading --------------------------------------------------------------------------------
    def load_frame(self, split: str, scene_id: int, im_id: int, masks: bool = True) -> BopFrame:
        """Load one frame with its annotations, in metres.

        Parameters
        ----------
        split, scene_id, im_id :
            Which frame.
        masks : bool
            Read ``mask/`` and ``mask_visib/`` (when present); False leaves them None.

        Returns
        -------
        BopFrame
            ``raw_camera`` and each object's ``raw_gt`` / ``raw_info`` hold the file records.
        """
        scene = self._scene(split, scene_id)
        scene_dir = self._split(split)[scene_id]
        if im_id not in scene.camera:
            raise InputError(f"{scene.camera_path}", f"a record for im_id {im_id}",
                             f"ids {min(scene.camera, default=None)}..{max(scene.camera, default=None)}"
                             f" ({len(scene.camera)} images)")
        stem = f"{im_id:06d}"
        cam_rec = scene.camera[im_id]
        where = f"{scene.camera_path}: im_id {im_id}"

        img_path = _find_image(scene_dir, ("rgb", "gray"), stem)
        if img_path is None:
            raise InputError(str(scene_dir / "rgb" / f"{stem}.png"),
                             "an rgb/ or gray/ image for every image of scene_camera.json",
                             "no such file")
        img = read_image(img_path, str(img_path))
        shape = img.shape[:2]

        depth_scale = cam_rec.get("depth_scale", self.depth_scale)
        depth = None
        depth_path = _find_image(scene_dir, ("depth",), stem)
        if depth_path is not None:
            if depth_scale is None:
                raise InputError(f"{where}: depth_scale", "a positive number (depth image exists)",
                                 "missing here and in camera.json")
            depth_scale = _number(depth_scale, f"{where}: depth_scale")
            units = read_image(depth_path, str(depth_path), rgb=False)
            if units.ndim != 2 or units.shape != shape:
                raise InputError(str(depth_path), f"a single-channel {shape[1]}x{shape[0]} depth "
                                 "image (image size)", describe_array(units))
            depth = depth_from_png_units(units, depth_scale)
        depth_scale = 0.1 if depth_scale is None else float(depth_scale)

        K = _numbers(cam_rec.get("cam_K"), 9, f"{where}: cam_K", "3x3 row-major intrinsics")
        try:
            camera = CameraIntrinsics.from_K(K, shape[1], shape[0])
        except InputError as e:
            raise InputError(f"{where}: cam_K", e.expected, e.got) from e
        T_cam_world = None
        if "cam_R_w2c" in cam_rec or "cam_t_w2c" in cam_rec:
            T_cam_world = _pose(cam_rec, "cam_R_w2c", "cam_t_w2c", where)

        gt_list = scene.gt.get(im_id, [])
        info_list = None if scene.info is None else scene.info.get(im_id)
        objects = []
        for gt_id, g in enumerate(gt_list):
            info = None if info_list is None else info_list[gt_id]
            mask = mask_visib = None
            if masks:
                name = f"{stem}_{gt_id:06d}.png"
                if (scene_dir / "mask" / name).is_file():
                    mask = _mask_from_file(scene_dir / "mask" / name, shape)
                if (scene_dir / "mask_visib" / name).is_file():
                    mask_visib = _mask_from_file(scene_dir / "mask_visib" / name, shape)
            objects.append(ObjectAnnotation(
                obj_id=int(g["obj_id"]),
                T_cam_obj=_pose(g, "cam_R_m2c", "cam_t_m2c", f"{scene.gt_path}: im_id {im_id}"),
                mask=mask, mask_visib=mask_visib,
                px_count_all=None if info is None else int(info["px_count_all"]),
                bbox_obj=None if info is None else tuple(int(v) for v in info["bbox_obj"]),
                raw_gt=copy.deepcopy(g), raw_info=copy.deepcopy(info)))
        return BopFrame(rgb=img, depth=depth, camera=camera, objects=objects,
                        depth_scale=depth_scale, T_cam_world=T_cam_world,
                        raw_camera=copy.deepcopy(cam_rec), scene_id=int(scene_id),
                        im_id=int(im_id))

    def load_model(self, obj_id: int) -> PartModel:
        """The object model ``models/obj_NNNNNN.ply`` (mm in the file) as a PartModel in metres,
        with its symmetries from ``models_info.json`` (source and checksum: the PLY file)."""
        path = self.root / "models" / f"obj_{int(obj_id):06d}.ply"
        if not path.is_file():
            raise InputError(str(path), f"the model of obj_id {obj_id}", "no such file")
        info_path = self.root / "models" / "models_info.json"
        if int(obj_id) not in self.models_info:
            raise InputError(f"{info_path}: {obj_id}", "a models_info entry for this object",
                             "missing")
        # Published BOP models include open scans: load them as they are (repairs still listed).
        part = load_mesh(path, units="mm", name=path.stem, require_watertight=False)
        return PartModel.from_models_info(part.name, part, self.models_info[int(obj_id)])

    # -- internals ------------------------------------------------------------------------------
    def _split(self, split: str) -> dict[int, Path]:
        if split not in self._scene_dirs:
            raise InputError("split", f"one of {self.splits()}", repr(split))
        return self._scene_dirs[split]

    def _scene(self, split: str, scene_id: int) -> _SceneData:
        key = (split, int(scene_id))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        scenes = self._split(split)
        if int(scene_id) not in scenes:
            raise InputError("scene_id", f"one of {list(scenes)} in split {split!r}",
                             repr(scene_id))
        data = _parse_scene(scenes[int(scene_id)])
        self._cache[key] = data
        if len(self._cache) > _SCENE_CACHE_SIZE:
            self._cache.popitem(last=False)
        return data


def _pose(rec: dict, r_key: str, t_key: str, where: str) -> np.ndarray:
    R = _numbers(rec.get(r_key), 9, f"{where}: {r_key}", "3x3 row-major rotation")
    t = _numbers(rec.get(t_key), 3, f"{where}: {t_key}", "translation in mm")
    T = make_pose(R.reshape(3, 3), t / MM_PER_M)
    check_pose(T, f"{where}: {r_key}", atol=_READ_ROTATION_ATOL)
    return T


def _parse_scene(scene_dir: Path) -> _SceneData:
    cam_path = scene_dir / "scene_camera.json"
    gt_path = scene_dir / "scene_gt.json"
    info_path = scene_dir / "scene_gt_info.json"
    camera = _int_keys(_load_json(cam_path, "scene_camera.json"), cam_path, "im_id -> camera")
    for im_id, rec in camera.items():
        where = f"{cam_path}: im_id {im_id}"
        if not isinstance(rec, dict):
            raise InputError(where, "a JSON object with cam_K and depth_scale", repr(rec))
        if "cam_K" not in rec:
            raise InputError(f"{where}: cam_K", "9 numbers (3x3 row-major intrinsics)", "missing")
        _numbers(rec["cam_K"], 9, f"{where}: cam_K", "3x3 row-major intrinsics")
        if "depth_scale" in rec:
            _number(rec["depth_scale"], f"{where}: depth_scale")
        if "cam_R_w2c" in rec or "cam_t_w2c" in rec:
            _pose(rec, "cam_R_w2c", "cam_t_w2c", where)

    gt = _int_keys(_load_json(gt_path, "scene_gt.json"), gt_path, "im_id -> objects")
    for im_id, recs in gt.items():
        where = f"{gt_path}: im_id {im_id}"
        if not isinstance(recs, list):
            raise InputError(where, "a list of object records", type(recs).__name__)
        for gt_id, g in enumerate(recs):
            w = f"{where}, object {gt_id}"
            if not isinstance(g, dict):
                raise InputError(w, "a JSON object with cam_R_m2c, cam_t_m2c, obj_id", repr(g))
            if "obj_id" not in g:
                raise InputError(f"{w}: obj_id", "an integer object id", "missing")
            _integer(g["obj_id"], f"{w}: obj_id", "an integer object id")
            _pose(g, "cam_R_m2c", "cam_t_m2c", w)

    info = None
    if info_path.is_file():
        info = _int_keys(_load_json(info_path, "scene_gt_info.json"), info_path,
                         "im_id -> objects")
        for im_id, recs in info.items():
            where = f"{info_path}: im_id {im_id}"
            n_gt = len(gt.get(im_id, []))
            if not isinstance(recs, list) or len(recs) != n_gt:
                got = f"{len(recs)} records" if isinstance(recs, list) else type(recs).__name__
                raise InputError(where, f"{n_gt} records (one per scene_gt.json object)", got)
            for gt_id, r in enumerate(recs):
                w = f"{where}, object {gt_id}"
                if not isinstance(r, dict):
                    raise InputError(w, "a JSON object with px_count_all, bbox_obj, ...", repr(r))
                if "px_count_all" not in r:
                    raise InputError(f"{w}: px_count_all", "an integer", "missing")
                _integer(r["px_count_all"], f"{w}: px_count_all")
                if "bbox_obj" not in r:
                    raise InputError(f"{w}: bbox_obj", "4 numbers (x, y, w, h)", "missing")
                b = _numbers(r["bbox_obj"], 4, f"{w}: bbox_obj", "x, y, w, h")
                if np.any(b != np.round(b)):
                    raise InputError(f"{w}: bbox_obj", "integer pixels", r["bbox_obj"])
        missing = [i for i, recs in gt.items() if recs and i not in info]
        if missing:
            raise InputError(str(info_path), "a record for every image of scene_gt.json",
                             f"none for im_id {missing[:5]}")
    return _SceneData(camera, gt, info, cam_path, gt_path, info_path)
