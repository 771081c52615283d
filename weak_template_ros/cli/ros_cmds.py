"""CLI commands around the ROS 2 nodes: `replay` (a pipeline over a rosbag2 recording)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weak_template_ros.cli.apps import app
from weak_template_ros.cli.common import console, print_json, progress, user_errors


@app.command("replay")
def replay(
    bag: Path = typer.Option(..., help="input rosbag2: folder with metadata.yaml, .db3 or .mcap"),
    out: Path = typer.Option(..., help="output rosbag2 folder to create (results as messages)"),
    pipeline: str = typer.Option("pose", help="pose (colour + depth + camera_info -> poses) or "
                                 "align (image -> mark offset)"),
    model: Path | None = typer.Option(None, help="pose: part mesh the templates were built from"),
    templates: Path | None = typer.Option(None, help="pose: template library (.wtl)"),
    template: Path | None = typer.Option(None, help="align: golden template image"),
    params: Path | None = typer.Option(None, help="ROS parameter file of the node "
                                       "(pose_estimator or aligner section, e.g. config/"
                                       "pose_estimator.yaml); options override it"),
    color_topic: str = typer.Option("/camera/color/image_raw", help="pose: colour topic"),
    depth_topic: str = typer.Option("/camera/aligned_depth_to_color/image_raw",
                                    help="pose: depth topic"),
    info_topic: str = typer.Option("/camera/color/camera_info", help="pose: camera_info topic"),
    image_topic: str = typer.Option("/camera/image_raw", help="align: image topic"),
    storage: str = typer.Option("mcap", help="output storage: mcap or sqlite3"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Run the pose or alignment pipeline over a rosbag2 file; write the results into a new bag."""
    import dataclasses

    from weak_template_ros.errors import InputError
    from weak_template_ros.ros.params import load_ros_params
    from weak_template_ros.ros.replay import PIPELINES, ReplayTopics, replay_bag

    with user_errors():
        if pipeline not in PIPELINES:
            raise InputError("--pipeline", f"one of {list(PIPELINES)}", repr(pipeline))
        topics = ReplayTopics(color=color_topic, depth=depth_topic, info=info_topic, image=image_topic)
        pose_cfg = align_cfg = None
        if pipeline == "pose":
            from weak_template_ros.ros.pose_estimator import PoseEstimatorConfig

            pose_cfg = (load_ros_params(PoseEstimatorConfig, params, "pose_estimator") if params
                        else PoseEstimatorConfig())
            overrides = {k: str(v) for k, v in (("model_path", model), ("templates_path", templates))
                         if v is not None}
            pose_cfg = dataclasses.replace(pose_cfg, **overrides)
        else:
            from weak_template_ros.ros.aligner import AlignerNodeConfig

            align_cfg = (load_ros_params(AlignerNodeConfig, params, "aligner") if params
                         else AlignerNodeConfig())
            if template is not None:
                align_cfg = dataclasses.replace(align_cfg, template_path=str(template))
        with progress() as bar:
            task = bar.add_task(f"replay: {pipeline}", total=None)
            summary = replay_bag(bag, out, pipeline, pose_config=pose_cfg, align_config=align_cfg,
                                 topics=topics, storage=storage,
                                 on_frame=lambda i, n: bar.update(task, completed=i, total=n))
    data = summary.to_dict()
    if as_json:
        print_json(data)
        return
    table = Table("quantity", "value", title=f"replay {pipeline}: {bag} -> {out} ({storage})")
    for key in ("frames", "processed", "found", "bad_frames", "median_compute_ms"):
        table.add_row(key, str(data[key]))
    for topic, n in sorted(data["written"].items()):
        table.add_row(f"written {topic}", str(n))
    console.print(table)
    for e in data["errors"]:
        console.print(f"[yellow]bad frame:[/yellow] {e}")
