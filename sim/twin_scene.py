import blenderproc as bproc  # noqa: F401, I001  (BlenderProc's CLI requires this import first)

# Render a digital-twin scene given in full by a job JSON: the same meshes, poses, camera and
# lights that the embedded renderer uses (weak_template_ros.twin.blenderproc writes the job).
#
#   blenderproc run sim/twin_scene.py JOB.json OUT_DIR
#
# Job (format weak_template_ros.blenderproc_job/1), metres and 4x4 poses, OpenCV camera frame:
#   camera  {K: 9 numbers, width, height, clip_start, clip_end}
#   render  {samples, denoiser (null|INTEL|OPTIX), noise_threshold, adaptive_min_samples,
#            filter_width_px, threads, max_bounces, caustics, tile_size, persistent_data, seed,
#            gt_pass (false: radiance only, no depth/instance pass)}
#   meshes  {key: path of an .npz with vertices (N, 3) and faces (M, 3)}
#   materials {key: {base_color, metallic, roughness, specular, anisotropic, coat, ior}}
#   objects [{name, mesh, material, T_world_obj, frames (null: all), annotated (bool),
#             smooth_angle_deg}]  -- "instance" in the output indexes the annotated objects
#   table   null or {half_size, material}: the plane z = 0 of the world frame
#   world   {color, strength}: uniform environment light
#   lights  [{type, T_world_light | location, energy, color, size, frames}]
#   frames  [{T_world_cam}]
# Output: see bproc_common.py.

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bproc_common as common


def main() -> None:
    job, out_dir = common.read_job()
    common.init()
    common.configure_render(job["render"])
    annotated, _ = common.build_scene(job)
    frames = common.render_frames(annotated, len(job["frames"]), job["render"])
    common.write_outputs(out_dir, frames, annotated)


main()
