"""weak_template_ros: weak-template vision for ROS 2 with a digital twin.

Everything here imports without ROS; only :mod:`weak_template_ros.ros` touches rclpy.
"""

__version__ = "0.1.0"
