"""Mark alignment: the aligner node measuring a camera's images against a golden template.

    ros2 launch weak_template_ros mark_alignment.launch.py template:=mark.png \
        camera:=camera image:=image_raw params_file:=my_aligner.yaml

Arguments: ``template`` (golden template image, PNG/TIFF 8 or 16 bit), ``camera`` (namespace of
the camera driver's topics) and ``image`` (image topic in it: the aligner reads
``<camera>/<image>``), ``params_file`` (default: the package's config/aligner_node.yaml),
``namespace`` (of the nodes). Results: ``alignment/offset`` (TransformStamped, stage metres),
``alignment/offset_px`` (PoseWithCovarianceStamped, pixels), ``alignment/result`` (every image,
found or not), ``alignment/debug_image``, ``/diagnostics``; service ``aligner/reload_template``.

With ``sim:=true`` the closed loop runs against the digital twin: ``twin_stage`` (a simulated
x/y/theta stage whose camera publishes ``<camera>/<image>``, config/twin_stage.yaml) and
``alignment_controller`` (moves the stage by the measured offset until within tolerance,
config/alignment_controller.yaml; verdict on ``alignment/convergence``). A template that
matches the twin's mark::

    weak-template generate marks --out out/marks --n 1
    ros2 launch weak_template_ros mark_alignment.launch.py template:=out/marks/template.png sim:=true
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
    image_topic = [LaunchConfiguration("camera"), "/", LaunchConfiguration("image")]
    sim = IfCondition(LaunchConfiguration("sim"))
    return LaunchDescription([
        DeclareLaunchArgument("template", description="golden template image of the mark "
                              "(PNG/TIFF, 8 or 16 bit)"),
        DeclareLaunchArgument("camera", default_value="camera",
                              description="namespace of the camera driver's topics"),
        DeclareLaunchArgument("image", default_value="image_raw",
                              description="image topic in the camera namespace"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the nodes"),
        DeclareLaunchArgument("params_file", default_value=_config("aligner_node.yaml"),
                              description="ROS parameter file of the aligner node"),
        DeclareLaunchArgument("sim", default_value="false",
                              description="also run twin_stage and alignment_controller (closed loop "
                              "against the digital twin)"),
        DeclareLaunchArgument("stage_params_file", default_value=_config("twin_stage.yaml"),
                              description="ROS parameter file of twin_stage (sim:=true)"),
        DeclareLaunchArgument("controller_params_file", default_value=_config("alignment_controller.yaml"),
                              description="ROS parameter file of alignment_controller (sim:=true)"),
        Node(
            package="weak_template_ros",
            executable="aligner",
            name="aligner",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"template_path": LaunchConfiguration("template")}],
            remappings=[("camera/image_raw", image_topic)],
        ),
        Node(
            package="weak_template_ros",
            executable="twin_stage",
            name="twin_stage",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            condition=sim,
            parameters=[LaunchConfiguration("stage_params_file")],
            remappings=[("camera/image_raw", image_topic)],
        ),
        Node(
            package="weak_template_ros",
            executable="alignment_controller",
            name="alignment_controller",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            condition=sim,
            parameters=[LaunchConfiguration("controller_params_file")],
        ),
    ])
