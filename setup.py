"""ament_python / pip installation of weak_template_ros.

Installs the Python package, the console scripts, and launch/ + config/ as data files under
share/weak_template_ros (where `ros2 launch` and ament_index look for them).
"""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "weak_template_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    package_data={PACKAGE: ["nets/weights/*", "ros/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="weak_template_ros maintainers",
    maintainer_email="maintainers@weak-template-ros.invalid",
    description="Weak-template vision for ROS 2: LINEMOD, ICP pose, sub-pixel alignment, twin.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "weak-template = weak_template_ros.cli:main",
            "twin_camera = weak_template_ros.ros.twin_camera:main",
            "pose_estimator = weak_template_ros.ros.pose_estimator:main",
            "aligner = weak_template_ros.ros.aligner:main",
            "twin_stage = weak_template_ros.ros.twin_stage:main",
            "alignment_controller = weak_template_ros.ros.alignment_controller:main",
        ],
    },
)
