#!/usr/bin/env python3
"""Build the BlenderProc environment (`make sim-setup`): a folder laid out like a Blender install.

Run with a Python 3.11 interpreter (PyPI's bpy 4.2 is built for 3.11 only); it needs only the
standard library. The result, by default ``sim/blenderproc_env/``::

    blender/                         the --custom-blender-path folder
        blender                      executable: behaves like `blender --background --python FILE`
        blender_shim.py              what that executable runs (copied from sim/)
        4.2/python/                  venv: bpy (Blender as a Python module) and numpy
        custom-python-packages/      BlenderProc's run-time packages (pip --prefix), with
            installed_packages_cache_v2.json   the cache BlenderProc reads instead of pip-installing
    blenderproc/blenderproc/         BlenderProc itself, alone in its folder (see below)
    stamp.json                       written last: versions and the fingerprint of the inputs

Why BlenderProc sits alone in a folder: run by its CLI, ``blenderproc/__init__.py`` removes its
parent folder from ``sys.path``; installed into the venv, that removed bpy's and numpy's folder too.

Every version is pinned by ``sim/constraints.txt``; after the wheels are fetched once nothing is
installed at run time (the driver also sets ``PIP_NO_INDEX=1``). ``--freeze`` rewrites
``sim/constraints.txt`` from what was installed (after changing a requirements file).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLENDERPROC = "blenderproc==2.8.0"
BLENDER_MAJOR = "4.2"
PY = "python3.11"
INPUTS = ("build_env.py", "blender_shim.py", "requirements-blender.in",
          "requirements-blenderproc.in", "constraints.txt")
# BlenderProc asks for the GUI OpenCV build; the headless one provides the same cv2 module.
PACKAGE_ALIASES = {"opencv-contrib-python": "opencv-contrib-python-headless"}
BLENDER_LAUNCHER = """#!/bin/sh
# Blender stand-in for `blenderproc run --custom-blender-path`: Blender's Python with bpy as a module.
here="$(cd "$(dirname "$0")" && pwd)"
exec "$here/{major}/python/bin/{py}" "$here/blender_shim.py" "$@"
"""


def fingerprint() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        p = HERE / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b"") + b"\0")
    return h.hexdigest()


def run(cmd: list, **kw) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)


def pip(python: Path, *args, env=None) -> None:
    run([python, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q", *args], env=env)


def read_requirements(path: Path) -> list[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def blenderproc_default_packages(bproc_dir: Path) -> list[str]:
    """``DefaultConfig.default_pip_packages`` read from BlenderProc's source (importing BlenderProc
    outside Blender raises by design)."""
    src = (bproc_dir / "blenderproc/python/utility/DefaultConfig.py").read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "default_pip_packages"
                                                for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise RuntimeError("default_pip_packages not found in BlenderProc's DefaultConfig.py")


def check_requirements_cover(defaults: list[str], ours: list[str]) -> None:
    have = {r.lower() for r in ours}
    missing = []
    for req in defaults:
        name, _, version = req.lower().partition("==")
        name = PACKAGE_ALIASES.get(name, name)
        if (f"{name}=={version}" if version else name) not in have:
            missing.append(req)
    if missing:
        raise SystemExit(f"sim/requirements-blenderproc.in does not pin BlenderProc's run-time packages "
                         f"{missing} (BlenderProc would pip-install them at run time): update it")


def pip_freeze(python: Path, path: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "list",
                          "--format=freeze", f"--path={path}"],
                         check=True, capture_output=True, text=True).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.strip().split("==", 1)
            pins[name] = version
    return pins


def build(out: Path, freeze: bool) -> None:
    if sys.version_info[:2] != (3, 11):
        raise SystemExit(f"build_env.py needs Python 3.11 (PyPI's bpy {BLENDER_MAJOR} is cp311 only), "
                         f"got {sys.version.split()[0]}: run it with python3.11")
    t0 = time.time()
    if out.exists():
        shutil.rmtree(out)
    blender = out / "blender"
    venv = blender / BLENDER_MAJOR / "python"
    custom = blender / "custom-python-packages"
    bproc_dir = out / "blenderproc"
    python = venv / "bin" / PY
    constraints = HERE / "constraints.txt"
    cons = ["-c", constraints] if constraints.exists() and not freeze else []
    env = dict(os.environ, PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)

    run([sys.executable, "-m", "venv", venv])
    pip(python, "install", "-r", HERE / "requirements-blender.in", *cons, env=env)
    pip(python, "install", "--no-deps", "--target", bproc_dir, BLENDERPROC, *cons, env=env)
    ours = read_requirements(HERE / "requirements-blenderproc.in")
    check_requirements_cover(blenderproc_default_packages(bproc_dir), ours)
    pip(python, "install", "--prefix", custom, "-r", HERE / "requirements-blenderproc.in", *cons,
        env=env)

    site = f"lib/{PY}/site-packages"
    installed = {**pip_freeze(python, venv / site), **pip_freeze(python, custom / site)}
    # BlenderProc's cache format: lower-case name -> version, read before it would call pip.
    cache = {k.lower(): v for k, v in installed.items()}
    for wanted, provided in PACKAGE_ALIASES.items():
        cache[wanted] = cache[provided]
    (custom / "installed_packages_cache_v2.json").write_text(json.dumps(cache, sort_keys=True))

    # Blender's data files (BlenderProc loads e.g. the smooth-by-angle node group from them) sit
    # inside the bpy package; a Blender install has them at DIR/4.2/datafiles.
    (blender / BLENDER_MAJOR / "datafiles").symlink_to(Path("python") / site / "bpy" / BLENDER_MAJOR
                                                       / "datafiles")
    shutil.copy2(HERE / "blender_shim.py", blender / "blender_shim.py")
    launcher = blender / "blender"
    launcher.write_text(BLENDER_LAUNCHER.format(major=BLENDER_MAJOR, py=PY))
    launcher.chmod(0o755)

    if freeze:
        bproc_pins = pip_freeze(python, bproc_dir)
        lines = sorted({f"{k}=={v}" for k, v in {**installed, **bproc_pins}.items()
                        if k.lower() not in ("pip", "setuptools")}, key=str.lower)
        constraints.write_text("# Exact versions of the BlenderProc environment (sim/build_env.py "
                               "--freeze).\n" + "\n".join(lines) + "\n")
        print(f"wrote {constraints}")

    smoke_test(out)
    stamp = {"fingerprint": fingerprint(), "blenderproc": BLENDERPROC,
             "bpy": installed.get("bpy"), "numpy": installed.get("numpy"),
             "python": sys.version.split()[0], "build_seconds": round(time.time() - t0, 1)}
    (out / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
    print(f"BlenderProc environment ready in {out} ({stamp['build_seconds']} s)")


SMOKE = """import blenderproc as bproc  # noqa: I001 (BlenderProc's CLI requires this first)
import bpy, cv2, numpy, scipy, skimage, sklearn, trimesh  # noqa: E401,F401
print("SMOKE_OK", bpy.app.version_string, numpy.__version__, cv2.__version__, flush=True)
"""


def smoke_test(out: Path) -> None:
    """`blenderproc run` of a script importing BlenderProc and its packages, offline."""
    work = out / "smoke"
    work.mkdir()
    script = work / "smoke.py"
    script.write_text(SMOKE)
    env = dict(os.environ, PIP_NO_INDEX="1", PYTHONPATH=str((out / "blenderproc").resolve()))
    python = out / "blender" / BLENDER_MAJOR / "python" / "bin" / PY
    cli = out / "blenderproc" / "blenderproc" / "command_line.py"
    res = subprocess.run([str(python), str(cli), "run", "--custom-blender-path",
                          str((out / "blender").resolve()), "--temp-dir", str(work / "tmp"),
                          str(script)], env=env, capture_output=True, text=True, timeout=300)
    if res.returncode != 0 or "SMOKE_OK" not in res.stdout or "Installing pip package" in res.stdout:
        raise SystemExit(f"smoke test of the BlenderProc environment failed (exit {res.returncode}):\n"
                         f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    print(next(ln for ln in res.stdout.splitlines() if ln.startswith("SMOKE_OK")))
    shutil.rmtree(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "blenderproc_env")
    ap.add_argument("--freeze", action="store_true",
                    help="resolve without constraints.txt, then rewrite it from what was installed")
    args = ap.parse_args()
    build(args.out.resolve(), args.freeze)


if __name__ == "__main__":
    main()
