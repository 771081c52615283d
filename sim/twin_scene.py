import blenderproc as bproc  # noqa: F401, I001  (BlenderProc's CLI requires this import first)

# Render a digital-twin scene given in full by a job JSON: the same meshes, poses, camera and
# lights that the embedded renderer uses (weak_template_ros.twin.blenderproc writes the job).
#
#   blenderproc run sim/twin_scene.py JOB.json OUT_DIR
#
# Job (format weak_template_ros.blenderproc_job/1), metres and 4x4 poses, OpenCV camera frame:
#   camera  {K: 9 numbers, width, height, clip_start, clip_end}
#   render  {samples, denoiser (null|INTEL|OPTIX), noise_threshold, filter_width_px, threads,
#            max_bounces, seed}
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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bproc_common as common


def main() -> None:
    job, out_dir = common.read_job()
    common.init()
    common.configure_render(job["render"])
    n_frames = len(job["frames"])
    common.set_camera(job["camera"], [f["T_world_cam"] for f in job["frames"]])

    materials = {k: common.principled_material(k, m) for k, m in job.get("materials", {}).items()}
    meshes = {k: common.load_mesh_npz(p) for k, p in job["meshes"].items()}
    annotated = []
    for spec in job["objects"]:
        v, f = meshes[spec["mesh"]]
        obj = common.mesh_object(spec["name"], v, f, spec.get("smooth_angle_deg"))
        obj.set_local2world_mat(np.asarray(spec["T_world_obj"], float))
        if spec.get("material") is not None:
            obj.replace_materials(materials[spec["material"]])
        common.keyframe_visibility(obj.blender_obj, spec.get("frames"), n_frames)
        if spec.get("annotated", True):
            annotated.append(obj)

    table = job.get("table")
    if table is not None:
        h = float(table["half_size"])
        v = np.array([[-h, -h, 0], [h, -h, 0], [h, h, 0], [-h, h, 0]], float)
        plane = common.mesh_object("table", v, np.array([[0, 1, 2], [0, 2, 3]]))
        if table.get("material") is not None:
            plane.replace_materials(materials[table["material"]])

    world = job.get("world", {"color": [0.05, 0.05, 0.05], "strength": 1.0})
    common.set_world(world["color"], world.get("strength", 1.0))
    for light in job.get("lights", []):
        common.add_light(light, n_frames)

    frames = common.render_frames(annotated, n_frames, job["render"])
    common.write_outputs(out_dir, frames, annotated)


main()
