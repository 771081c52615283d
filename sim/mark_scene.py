import blenderproc as bproc  # noqa: I001  (BlenderProc's CLI requires this import first)

# An alignment mark on a specular wafer or a glossy PCB, seen from straight above under a coaxial
# or a ring light (weak_template_ros.twin.blenderproc.build_mark_job writes the job).
#
#   blenderproc run sim/mark_scene.py JOB.json OUT_DIR
#
# Job (format weak_template_ros.blenderproc_mark_job/1), metres, OpenCV camera frame:
#   camera   {K: 9 numbers, width, height, height_m}: looks straight down (-z) from (0, 0, height_m)
#   render   as twin_scene.py's
#   texture  {path: .npz with coverage (N, N) float32 (mark area fraction per texel, row 0 on the
#            wafer's image-top side), pitch_m: texel size}: the mark twin's exact coverage
#   surface  {background: material, mark: material, half_size_m}: the wafer/PCB plane z = 0; a
#            texel mixes the two materials by its coverage (area-weighted, as a sensor integrates)
#   light    {kind: coaxial|ring, energy, ...} (see add_coaxial_light / add_ring_light)
#   world    {color, strength}
#   frames   [{location: [x, y, 0], angle: rad about +z}]: the wafer (stage) pose of each image
# Output: frame_{k:06d}.npz with radiance only, and result.json (see bproc_common.py).

import os
import sys

import bpy
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bproc_common as common

MARK_JOB_FORMAT = "weak_template_ros.blenderproc_mark_job/1"


def textured_plane(half: float, coverage: np.ndarray, pitch: float):
    """The plane z = 0 (+-half) with UVs that put the coverage texture's centre at the origin;
    outside the texture the coverage is its border's (EXTEND): zero, bare wafer."""
    n_rows, n_cols = coverage.shape
    v = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], float)
    plane = common.mesh_object("wafer", v, np.array([[0, 1, 2], [0, 2, 3]]))
    mesh = plane.get_mesh()
    uv = mesh.uv_layers.new(name="UVMap")
    # Texel (row r, col c) centre at x = (c - (n_cols - 1) / 2) * pitch, y = -(r - (n_rows - 1) / 2)
    # * pitch (the image's y points down, the wafer's up); Blender's v = 0 is the image's bottom row.
    loops_xy = v[np.array([0, 1, 2, 0, 2, 3])][:, :2]
    u_coord = loops_xy[:, 0] / (n_cols * pitch) + 0.5
    v_coord = loops_xy[:, 1] / (n_rows * pitch) + 0.5
    uv.data.foreach_set("uv", np.stack([u_coord, v_coord], 1).astype(np.float32).ravel())
    image = bpy.data.images.new("mark_coverage", n_cols, n_rows, alpha=False, float_buffer=True)
    image.colorspace_settings.name = "Non-Color"
    rgba = np.repeat(coverage[::-1, :, None], 4, axis=2).astype(np.float32)
    rgba[..., 3] = 1.0
    image.pixels.foreach_set(rgba.ravel())
    image.pack()
    return plane, image


def mixed_material(image, background: dict, mark: dict):
    """Background and mark Principled BSDFs mixed by the coverage texture."""
    mat = bpy.data.materials.new("wafer")
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image, tex.interpolation, tex.extension = image, "Linear", "EXTEND"
    mix = nodes.new("ShaderNodeMixShader")
    for slot, m in ((1, background), (2, mark)):
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        for key, value in common.principled_values(m).items():
            bsdf.inputs[key].default_value = value
        links.new(bsdf.outputs["BSDF"], mix.inputs[slot])
    links.new(tex.outputs["Color"], mix.inputs["Fac"])
    links.new(mix.outputs["Shader"], out.inputs["Surface"])
    return bproc.types.Material(mat)


def add_coaxial_light(light: dict, cam_height: float) -> None:
    """Coaxial (bright-field) light: what a beam splitter shows the wafer, a uniform source on the
    optical axis. Modelled as a square area light just above the camera, facing down, large
    enough that the mirror image of every pixel's ray lands on it (the reflected viewing cone is
    twice the field wide at twice the camera height) and wider by the illumination aperture
    (``size_m`` is chosen by the driver): a polished wafer looks bright, rough or absorbing
    features darker or brighter by their reflectance and by how much of their lobe the lamp fills."""
    lamp = bproc.types.Light(light_type="AREA", name="coaxial")
    lamp.set_location([0.0, 0.0, cam_height * 1.05])
    lamp.blender_obj.data.shape = "SQUARE"
    lamp.blender_obj.data.size = float(light["size_m"])
    lamp.set_energy(float(light["energy"]))


def add_ring_light(light: dict) -> None:
    """Ring light: ``count`` small point lights on a horizontal circle of ``radius_m`` at
    ``height_m`` around the optical axis (a low ring lights a polished wafer from outside its
    specular cone: dark field, rough features bright)."""
    n = int(light.get("count", 12))
    for i in range(n):
        a = 2 * np.pi * i / n
        lamp = bproc.types.Light(light_type="POINT", name=f"ring_{i}")
        lamp.set_location([light["radius_m"] * np.cos(a), light["radius_m"] * np.sin(a), light["height_m"]])
        lamp.set_energy(float(light["energy"]) / n)
        lamp.blender_obj.data.shadow_soft_size = float(light.get("lamp_radius_m", 0.002))


def main() -> None:
    job, out_dir = common.read_job(formats=(MARK_JOB_FORMAT,))
    common.init()
    common.configure_render(job["render"])
    cam = job["camera"]
    h = float(cam["height_m"])
    T_world_cam = np.diag([1.0, -1.0, -1.0, 1.0])  # OpenCV camera looking down, image x = world x
    T_world_cam[2, 3] = h
    common.set_camera(cam, [T_world_cam] * len(job["frames"]))
    with np.load(job["texture"]["path"]) as z:
        coverage = np.asarray(z["coverage"], np.float32)
    surf = job["surface"]
    plane, image = textured_plane(float(surf["half_size_m"]), coverage, float(job["texture"]["pitch_m"]))
    plane.replace_materials(mixed_material(image, surf["background"], surf["mark"]))
    for k, f in enumerate(job["frames"]):
        plane.set_location(f["location"], frame=k)
        plane.set_rotation_euler([0.0, 0.0, float(f["angle"])], frame=k)
    light = job["light"]
    if light["kind"] == "coaxial":
        add_coaxial_light(light, h)
    elif light["kind"] == "ring":
        add_ring_light(light)
    else:
        raise SystemExit(f"light.kind: expected coaxial or ring, got {light['kind']!r}")
    world = job.get("world", {"color": [0.0, 0.0, 0.0], "strength": 1.0})
    common.set_world(world["color"], world.get("strength", 1.0))
    n = len(job["frames"])
    bpy.context.scene.frame_start, bpy.context.scene.frame_end = 0, n
    frames = common.render_colour(n)
    common.write_outputs(out_dir, frames, [plane], extra={"light": light["kind"]})


main()
