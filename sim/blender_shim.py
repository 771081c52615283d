"""Stand-in for the ``blender`` executable, run with Blender's Python (bpy as a module).

``blenderproc run --custom-blender-path DIR script.py`` starts::

    DIR/blender --background --python-use-system-env --python-exit-code 2 --python script.py \
        -- script.py TEMP_DIR [script args...]

This file gives that command Blender's meaning with PyPI's ``bpy`` module instead of a Blender
binary: ``sys.argv`` is the whole command line (BlenderProc reads its arguments after ``--``),
``bpy`` is imported before the script (in Blender it is built in), the script runs as
``__main__``, and an exception ends the process with the ``--python-exit-code`` status.

Two differences of the bpy module are handled here:

* it ships no translations, so setting ``preferences.view.language = "en_US"`` (as
  ``bproc.init()`` does) raises; the property is replaced by one that accepts it;
* it crashes (SIGSEGV) while the interpreter shuts down once BlenderProc was imported, so the
  process flushes its outputs and ends itself with ``os._exit`` once the script is done.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback

USAGE = ("usage: blender [--background] [--python-use-system-env] [--python-exit-code N] "
         "--python FILE [-- ARGS...]")
FLAGS = {"--background", "-b", "--python-use-system-env", "--factory-startup", "--noaudio"}


def parse(argv: list[str]) -> tuple[str, int]:
    """The script to run and the exit status for a failing script, from Blender's options."""
    script, error_code = None, 1
    i = 0
    while i < len(argv) and argv[i] != "--":
        arg = argv[i]
        if arg in ("--python", "-P") and i + 1 < len(argv):
            script, i = argv[i + 1], i + 2
        elif arg == "--python-exit-code" and i + 1 < len(argv) and argv[i + 1].isdigit():
            error_code, i = int(argv[i + 1]), i + 2
        elif arg in FLAGS:
            i += 1
        else:
            raise SystemExit(f"blender (bpy stand-in): unsupported option {arg!r}\n{USAGE}")
    if script is None:
        raise SystemExit(f"blender (bpy stand-in): no --python FILE given\n{USAGE}")
    return script, error_code


def accept_english_language(bpy) -> None:
    """Let ``preferences.view.language = "en_US"`` succeed on a bpy without translations.

    The module's enum offers no "en_US" item; English is what it shows anyway, so the
    preference is shadowed by a plain string property on the (Python-side) preferences view type.
    """
    view_type = type(bpy.context.preferences.view)
    try:
        bpy.context.preferences.view.language = "en_US"
    except TypeError:
        view_type.language = "en_US"


def main() -> int:
    argv = sys.argv[1:]
    script, error_code = parse(argv)
    # Blender's sys.argv holds its whole command line; sys.path does not hold this file's folder.
    sys.argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"), *argv]
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)
    status = 0
    try:
        import bpy

        accept_english_language(bpy)
        runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else error_code)
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        status = error_code
    return status


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # bpy crashes in interpreter shutdown after BlenderProc: end here
