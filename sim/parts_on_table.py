import blenderproc as bproc  # noqa: I001  (BlenderProc's CLI requires this import first)

# Parts dropped with physics onto the table of a twin job, then rendered.
#
#   blenderproc run sim/parts_on_table.py JOB.json OUT_DIR
#
# The job is twin_scene.py's (weak_template_ros.twin.blenderproc.build_job writes it) plus
#   physics {seed, drop_height_min, drop_height_max, min_time_s, max_time_s}
# Every annotated part is lifted by a seeded random height with a seeded random orientation and
# dropped; distractors and the table are obstacles; occluders (per-frame objects) are left out of
# the simulation. result.json holds the settled poses of the annotated parts (T_world_obj): they
# are the ground truth of the rendered frames.

import os
import sys

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bproc_common as common


def main() -> None:
    job, out_dir = common.read_job()
    common.init()
    common.configure_render(job["render"])
    annotated, everything = common.build_scene(job)
    phys = job["physics"]
    rng = np.random.default_rng(int(phys["seed"]))
    for obj, spec in zip(everything, job["objects"], strict=False):
        if spec.get("frames") is None:  # per-frame occluders do not take part
            obj.enable_rigidbody(active=obj in annotated, collision_shape="CONVEX_HULL",
                                 friction=0.8, collision_margin=0.0005)
    if job.get("table") is not None:
        everything[-1].enable_rigidbody(active=False, collision_shape="MESH")
    for obj in annotated:
        T = obj.get_local2world_mat()
        T[:3, :3] = Rotation.random(random_state=rng).as_matrix()
        T[2, 3] += rng.uniform(phys["drop_height_min"], phys["drop_height_max"])
        obj.set_local2world_mat(T)
    bproc.object.simulate_physics_and_fix_final_poses(min_simulation_time=phys["min_time_s"],
                                                      max_simulation_time=phys["max_time_s"],
                                                      check_object_interval=1.0)
    frames = common.render_frames(annotated, len(job["frames"]), job["render"])
    common.write_outputs(out_dir, frames, annotated, extra={"physics": phys})


main()
