"""Overview picture of a BOP dataset: what `weak-template show` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weak_template_ros import viz
from weak_template_ros.errors import InputError
from weak_template_ros.twin.bop import BopDataset


def frame_panels(frame, diameters: dict[int, float]) -> list[np.ndarray]:
    """Three panels of one frame: RGB + GT axes/boxes, depth colour map, visible masks."""
    rgb = viz.to_rgb(frame.rgb)
    for k, obj in enumerate(frame.objects):
        rgb = viz.draw_axes(rgb, frame.camera, obj.T_cam_obj, 0.5 * diameters.get(obj.obj_id, 0.05))
        if obj.mask_visib is not None and obj.mask_visib.any():
            ys, xs = np.nonzero(obj.mask_visib)
            rgb = viz.draw_box(rgb, (xs.min(), ys.min(), np.ptp(xs), np.ptp(ys)), viz.colour(k),
                               f"obj {obj.obj_id}", thickness=1)
    depth = viz.depth_colormap(frame.depth) if frame.depth is not None else np.zeros_like(rgb)
    masks = [o.mask_visib for o in frame.objects if o.mask_visib is not None]
    mask_img = viz.overlay_masks(rgb * 0 + 40, masks) if masks else rgb * 0
    name = f"scene {frame.scene_id} / im {frame.im_id}"
    return [viz.label(rgb, name), viz.label(depth, "depth"), viz.label(mask_img, "visible masks")]


def dataset_overview(root: str | Path, out: str | Path, split: str | None = None,
                     n_frames: int = 4) -> dict:
    """Write a PNG with one row per frame (first frames of the first scenes) and return stats."""
    ds = BopDataset(root)
    splits = ds.splits()
    if not splits:
        raise InputError(str(root), "a BOP dataset with at least one split folder", "none")
    split = split or splits[0]
    if split not in splits:
        raise InputError("--split", f"one of {splits}", repr(split))
    diameters = {int(k): v["diameter"] / 1000.0 for k, v in ds.models_info.items()}
    scene_ids = ds.scene_ids(split)
    picks = []
    for s in scene_ids:  # spread the overview over scenes first, then frames
        picks.extend((s, i) for i in ds.im_ids(split, s)[:2])
    picks = sorted(picks, key=lambda p: (picks.index(p) % 2, picks.index(p)))[:n_frames]
    rows = []
    for s, i in picks:
        rows.extend(frame_panels(ds.load_frame(split, s, i), diameters))
    viz.save_png(out, viz.tile(rows, cols=3))
    n_frames_total, n_obj, visib = 0, 0, []
    for s in scene_ids:
        for info in ds.scene_gt_info(split, s).values():
            n_frames_total += 1
            n_obj += len(info)
            visib.extend(r["visib_fract"] for r in info)
    return {"split": split, "scenes": len(scene_ids), "frames": n_frames_total, "objects": n_obj,
            "mean_visib_fract": float(np.mean(visib)) if visib else 0.0}
