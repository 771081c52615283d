"""ROS 2 edge of the package: the only place that imports rclpy and message packages.

Modules (import them directly; this package imports nothing so that ``loopback`` works without
rclpy):

* ``loopback``: the loopback-only Fast DDS environment every process sets before ``rclpy.init``.
* ``conversions``: Image (rgb8, bgr8, mono8, mono16, 16UC1 mm, 32FC1 m, padded rows, either byte
  order) <-> NumPy, CameraInfo <-> CameraIntrinsics, poses <-> Pose/PoseStamped/PoseArray/
  TransformStamped, stamps.
* ``qos``: the QoS profiles of images, results and static information.
* ``sync``: approximate-time synchroniser (message_filters when importable, ours otherwise).
* ``params``: ROS parameters declared from the core's config dataclasses, validated on change.
* ``diagnostics``: rate, stage latency, drops and errors on ``/diagnostics``.
* ``node_main``: console-script entry (loopback check, init, spin, clean SIGINT shutdown).
* ``twin_camera``: the digital twin (or a BOP folder, or a rosbag2) as an RGB-D camera node.
* ``pose_estimator``: synchronised RGB-D in, LINEMOD + ICP + verification, poses out.
* ``aligner``: sub-pixel mark offset (px and stage metres) of each image, template reload service.
* ``twin_stage``: simulated x/y/theta stage with camera, rendering the mark at its true pose.
* ``alignment_controller``: the reference loop moving the stage by the measured offset.
* ``testing``: in-process sessions and topic recorders for tests, benches and the demo.
"""
