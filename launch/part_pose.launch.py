"""6D poses of a part from an RGB-D camera: the pose_estimator node on a camera's topics.

    ros2 launch weak_template_ros part_pose.launch.py model:=part.ply templates:=part.wtl \
        camera:=camera params_file:=my_pose_estimator.yaml

Arguments: ``model`` (mesh the templates were built from), ``templates`` (.wtl from
``weak-template templates build``), ``camera`` (namespace of the camera driver's topics:
``<camera>/color/image_raw``, ``<camera>/aligned_depth_to_color/image_raw``,
``<camera>/color/camera_info``), ``params_file`` (default: the package's
config/pose_estimator.yaml), ``namespace`` (of the node). Results: ``pose_estimator/poses``,
``pose_estimator/pose``, ``pose_estimator/overlay``, ``/diagnostics``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    camera = LaunchConfiguration("camera")
    return LaunchDescription([
        DeclareLaunchArgument("model", description="part mesh (PLY/OBJ/STL) the templates were "
                              "built from"),
        DeclareLaunchArgument("templates", description="LINEMOD template library (.wtl) of the "
                              "model for this camera"),
        DeclareLaunchArgument("camera", default_value="camera",
                              description="namespace of the camera driver's topics"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument(
            "params_file",
            default_value=PathJoinSubstitution([FindPackageShare("weak_template_ros"), "config",
                                                "pose_estimator.yaml"]),
            description="ROS parameter file of the pose_estimator node"),
        Node(
            package="weak_template_ros",
            executable="pose_estimator",
            name="pose_estimator",
            namespace=LaunchConfiguration("namespace"),
            output="screen",
            parameters=[LaunchConfiguration("params_file"),
                        {"model_path": LaunchConfiguration("model"),
                         "templates_path": LaunchConfiguration("templates")}],
            remappings=[
                ("camera/color/image_raw", [camera, "/color/image_raw"]),
                ("camera/aligned_depth_to_color/image_raw", [camera, "/aligned_depth_to_color/image_raw"]),
                ("camera/color/camera_info", [camera, "/color/camera_info"]),
            ],
        ),
    ])
