"""Sim-in-the-loop: the digital twin as an RGB-D camera feeding the pose_estimator node, and
optionally the closed mark-alignment loop on a twin stage.

    weak-template generate parts --out out/parts --family hex_nut
    weak-template templates build --model out/parts/models/obj_000001.ply --out out/hex_nut.wtl
    weak-template generate marks --out out/marks --n 1          # only for alignment:=true
    ros2 launch weak_template_ros sim_in_the_loop.launch.py \
        model:=out/parts/models/obj_000001.ply templates:=out/hex_nut.wtl \
        alignment:=true mark_template:=out/marks/template.png

``twin_camera`` renders a moving hex nut (seed 0, the part ``generate parts --family hex_nut``
writes) among distractors at ``rate`` Hz on ``camera/...`` and its ground truth on
``camera/ground_truth/poses``; ``pose_estimator`` publishes ``pose_estimator/poses`` and
``pose_estimator/pose`` with the same stamps, so the two can be compared frame by frame.
Arguments: ``model``, ``templates``, ``rate``, ``twin_params_file`` (default
config/twin_camera.yaml), ``params_file`` (default config/pose_estimator.yaml).

With ``alignment:=true`` the mark-alignment graph runs too, in namespace ``alignment_loop``:
``twin_stage`` (a simulated x/y/theta stage whose camera publishes ``camera/image_raw``),
``aligner`` (against ``mark_template``) and ``alignment_controller`` (moves the stage until the
mark is within tolerance; verdict on ``alignment_loop/alignment/convergence``), each from its
file in config/ (twin_stage.yaml, aligner_node.yaml, alignment_controller.yaml).
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def _config(name: str) -> PathJoinSubstitution:
    return PathJoinSubstitution([FindPackageShare("weak_template_ros"), "config", name])


def generate_launch_description():
    loop = IfCondition(LaunchConfiguration("alignment"))
    return LaunchDescription([
        DeclareLaunchArgument("model", description="mesh of the twin's part (generate parts "
                              "--family hex_nut writes models/obj_000001.ply)"),
        DeclareLaunchArgument("templates", description="template library (.wtl) of that mesh"),
        DeclareLaunchArgument("rate", default_value="10.0", description="camera frames per second"),
        DeclareLaunchArgument("twin_params_file", default_value=_config("twin_camera.yaml"),
                              description="ROS parameter file of twin_camera"),
        DeclareLaunchArgument("params_file", default_value=_config("pose_estimator.yaml"),
                              description="ROS parameter file of pose_estimator"),
        DeclareLaunchArgument("alignment", default_value="false",
                              description="also run the closed mark-alignment loop on a twin stage"),
        DeclareLaunchArgument("mark_template", default_value="",
                              description="golden template of the twin stage's mark (alignment:=true; "
                              "weak-template generate marks writes one)"),
        Node(
            package="weak_template_ros",
            executable="twin_camera",
            name="twin_camera",
            output="screen",
            parameters=[LaunchConfiguration("twin_params_file"),
                        {"rate_hz": LaunchConfiguration("rate"), "families": ["hex_nut"],
                         "scene": {"parts_per_scene": 1, "distractors": 3}}],
        ),
        Node(
            package="weak_template_ros",
            executable="pose_estimator",
            name="pose_estimator",
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"model_path": LaunchConfiguration("model"),
                         "templates_path": LaunchConfiguration("templates")}],
        ),
        Node(
            package="weak_template_ros",
            executable="twin_stage",
            name="twin_stage",
            namespace="alignment_loop",
            output="screen",
            condition=loop,
            parameters=[_config("twin_stage.yaml")],
        ),
        Node(
            package="weak_template_ros",
            executable="aligner",
            name="aligner",
            namespace="alignment_loop",
            output="screen",
            condition=loop,
            parameters=[_config("aligner_node.yaml"),
                        {"template_path": LaunchConfiguration("mark_template")}],
        ),
        Node(
            package="weak_template_ros",
            executable="alignment_controller",
            name="alignment_controller",
            namespace="alignment_loop",
            output="screen",
            condition=loop,
            parameters=[_config("alignment_controller.yaml")],
        ),
    ])
