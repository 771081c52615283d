"""Static checks of every ROS 2 launch file in launch/ (the launch system is not installable here).

Each ``launch/*.launch.py`` is parsed with ``ast`` (never imported: launch/launch_ros are absent)
and its expressions are evaluated as far as they are static (constants, PathJoinSubstitution,
FindPackageShare, os.path.join, launch arguments' defaults, helper functions of the file).
Checked for every launch_ros ``Node``:

* ``package`` is this package and ``executable`` a console script of setup.py;
* every parameter file exists in the repository (share/weak_template_ros/config is config/),
  has a section for the node, and every parameter in it is declared by the node: it loads into
  the node's config dataclass (unknown names and bad values both fail), the class found where
  the node's module builds its ``ConfigParameters``;
* every name in an inline parameter dict is declared by the node;
* every launch argument used (``LaunchConfiguration``) is declared (``DeclareLaunchArgument``).
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from weak_template_ros.ros.params import flatten, load_ros_params, parameter_names, ros_params_section

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "weak_template_ros"
SHARE = f"<share:{PACKAGE}>"
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))
#: Parameters every rclpy node has besides its own.
ROS_BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service"}


@dataclass(frozen=True)
class Unknown:
    """A value that is not static (a launch argument without default, a runtime call)."""

    what: str


def _call_name(call: ast.Call) -> str:
    f = call.func
    if isinstance(f, ast.Name):
        return f.id
    if isinstance(f, ast.Attribute):
        prefix = _call_name(ast.Call(func=f.value, args=[], keywords=[])) \
            if isinstance(f.value, (ast.Name, ast.Attribute)) else ""
        return f"{prefix}.{f.attr}" if prefix else f.attr
    return ""


def _arg(call: ast.Call, index: int, keyword: str):
    for k in call.keywords:
        if k.arg == keyword:
            return k.value
    return call.args[index] if len(call.args) > index else None


class LaunchFile:
    """A launch file's syntax tree with a small static evaluator of its expressions."""

    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.functions = {f.name: f for f in ast.walk(self.tree) if isinstance(f, ast.FunctionDef)}
        self.names: dict[str, ast.expr] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                self.names[node.targets[0].id] = node.value
        self.calls = [c for c in ast.walk(self.tree) if isinstance(c, ast.Call)]
        self.arguments: dict[str, ast.expr | None] = {}
        for c in self.calls:
            if _call_name(c).endswith("DeclareLaunchArgument"):
                name = self.eval(_arg(c, 0, "name"))
                self.arguments[name] = _arg(c, 1, "default_value")
        self.used_arguments = {self.eval(_arg(c, 0, "variable_name")) for c in self.calls
                               if _call_name(c).endswith("LaunchConfiguration")}
        self.nodes = [c for c in self.calls if _call_name(c).split(".")[-1] == "Node"]

    def eval(self, e, env: dict | None = None):
        """Static value of an expression, or an :class:`Unknown`."""
        env = env or {}
        if e is None:
            return None
        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, (ast.List, ast.Tuple)):
            return [self.eval(x, env) for x in e.elts]
        if isinstance(e, ast.Dict):
            return {self.eval(k, env): self.eval(v, env) for k, v in zip(e.keys, e.values, strict=True)}
        if isinstance(e, ast.Name):
            if e.id in env:
                return env[e.id]
            if e.id in self.names:
                return self.eval(self.names[e.id], env)
            return Unknown(e.id)
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            a, b = self.eval(e.left, env), self.eval(e.right, env)
            return a + b if isinstance(a, str) and isinstance(b, str) else Unknown("a + b")
        if isinstance(e, ast.Call):
            return self._eval_call(e, env)
        return Unknown(ast.dump(e)[:60])

    def _eval_call(self, c: ast.Call, env: dict):
        name = _call_name(c)
        short = name.split(".")[-1]
        args = [self.eval(a, env) for a in c.args]
        if short == "PathJoinSubstitution":
            parts = args[0] if args else self.eval(_arg(c, 0, "substitutions"), env)
            return _join(parts)
        if short in ("FindPackageShare", "get_package_share_directory"):
            pkg = args[0] if args else self.eval(_arg(c, 0, "package"), env)
            return f"<share:{pkg}>"
        if name in ("os.path.join", "path.join"):
            return _join(args)
        if short == "TextSubstitution":
            return self.eval(_arg(c, 0, "text"), env)
        if short == "LaunchConfiguration":
            arg = args[0] if args else self.eval(_arg(c, 0, "variable_name"), env)
            default = self.arguments.get(arg)
            return self.eval(default, env) if default is not None else Unknown(f"argument {arg}")
        if short in self.functions:  # a helper of the launch file: evaluate its return value
            f = self.functions[short]
            bound = dict(zip((a.arg for a in f.args.args), args, strict=False))
            returns = [r for r in ast.walk(f) if isinstance(r, ast.Return)]
            if len(returns) == 1:
                return self.eval(returns[0].value, {**env, **bound})
        return Unknown(name)


def _join(parts) -> str | Unknown:
    if not isinstance(parts, list) or not all(isinstance(p, str) for p in parts):
        return Unknown(f"path {parts}")
    return "/".join(p.rstrip("/") for p in parts)


def console_scripts() -> dict[str, str]:
    """name -> "module:function" of setup.py's console_scripts (parsed, not run)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [e.value for e in v.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py declares no console_scripts")


def node_config_class(entry_point: str) -> type:
    """The config dataclass a node's module declares its parameters from (``ConfigParameters``)."""
    module_name = entry_point.split(":")[0]
    module = importlib.import_module(module_name)
    tree = ast.parse(Path(module.__file__).read_text())
    classes = {_call_name(c): c for c in ast.walk(tree) if isinstance(c, ast.Call)
               and _call_name(c).split(".")[-1] == "ConfigParameters"}
    assert classes, f"{module_name} builds no ConfigParameters: its parameters cannot be checked"
    names = {c.args[1].id for c in classes.values() if len(c.args) > 1 and isinstance(c.args[1], ast.Name)}
    assert len(names) == 1, f"{module_name}: expected one config class in ConfigParameters, got {names}"
    return getattr(module, names.pop())


def repo_path(path: str) -> Path:
    """Repository file installed at a share path (setup.py: config/ and launch/ go to share/)."""
    assert path.startswith(SHARE + "/"), f"{path}: expected a file of this package's share folder"
    return ROOT / path[len(SHARE) + 1:]


def test_launch_files_present():
    names = {p.name for p in LAUNCH_FILES}
    assert {"part_pose.launch.py", "sim_in_the_loop.launch.py"} <= names, names


def launch_file_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Everything wrong with a launch file's references (empty: all exist and are declared)."""
    import yaml

    from weak_template_ros.errors import InputError

    lf = LaunchFile(path)
    problems = []
    if "generate_launch_description" not in lf.functions:
        problems.append("no generate_launch_description()")
    undeclared = lf.used_arguments - set(lf.arguments)
    if undeclared:
        problems.append(f"LaunchConfiguration of undeclared arguments {sorted(undeclared)}")
    if not lf.nodes:
        problems.append("starts no Node")
    scripts = console_scripts()
    for call in lf.nodes:
        package = lf.eval(_arg(call, 99, "package"))
        executable = lf.eval(_arg(call, 99, "executable"))
        if package != PACKAGE:
            problems.append(f"Node of package {package!r}")
            continue
        if executable not in scripts:
            problems.append(f"executable {executable!r} is not a console script of setup.py "
                            f"({sorted(scripts)})")
            continue
        node_name = lf.eval(_arg(call, 99, "name")) or executable
        cls = node_config_class(scripts[executable])
        declared = set(parameter_names(cls)) | ROS_BUILTIN_PARAMETERS
        parameters = lf.eval(_arg(call, 99, "parameters")) or []
        for p in parameters if isinstance(parameters, list) else [parameters]:
            if isinstance(p, dict):
                unknown = set(flatten(p)) - declared
                if unknown:
                    problems.append(f"{node_name} declares no parameters {sorted(unknown)}")
                continue
            if not isinstance(p, str) or not p.startswith(SHARE + "/"):
                problems.append(f"parameter file of {node_name} not a static path of this package "
                                f"({p}): give its launch argument a default")
                continue
            file = root / p[len(SHARE) + 1:]
            if not file.is_file():
                problems.append(f"parameter file {file} does not exist")
                continue
            section = ros_params_section(yaml.safe_load(file.read_text()) or {}, node_name)
            if not section:
                problems.append(f"{file.name}: no ros__parameters section for node {node_name!r}")
            unknown = set(section) - declared
            if unknown:
                problems.append(f"{file.name}: {node_name} declares no parameters {sorted(unknown)}")
            else:
                try:
                    load_ros_params(cls, file, node_name)  # the values are valid for the node too
                except InputError as e:
                    problems.append(f"{file.name}: {e}")
    return problems


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_references_exist_and_are_declared(path: Path):
    assert launch_file_problems(path) == []


def test_broken_launch_file_is_caught(tmp_path):
    """Each kind of broken reference is reported (the check is not vacuous)."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "bad.yaml").write_text(
        "pose_estimator:\n  ros__parameters:\n    no_such_parameter: 1\n    pose:\n"
        "      verify:\n        score_threshold: 0.5\n")
    (tmp_path / "config" / "range.yaml").write_text(
        "pose_estimator:\n  ros__parameters:\n    sync_slop: -1.0\n")
    src = tmp_path / "bad.launch.py"
    src.write_text(
        "def generate_launch_description():\n"
        "    share = FindPackageShare('weak_template_ros')\n"
        "    return LaunchDescription([\n"
        "        Node(package='weak_template_ros', executable='no_such_node'),\n"
        "        Node(package='weak_template_ros', executable='pose_estimator', name='pose_estimator',\n"
        "             parameters=[PathJoinSubstitution([share, 'config', 'bad.yaml']),\n"
        "                         PathJoinSubstitution([share, 'config', 'range.yaml']),\n"
        "                         PathJoinSubstitution([share, 'config', 'missing.yaml']),\n"
        "                         LaunchConfiguration('params'), {'templates_pth': 'x.wtl'}])])\n")
    problems = launch_file_problems(src, root=tmp_path)
    expected = ["LaunchConfiguration of undeclared arguments ['params']",
                "executable 'no_such_node' is not a console script",
                "bad.yaml: pose_estimator declares no parameters ['no_such_parameter']",
                "range.yaml: ", "sync_slop", "missing.yaml does not exist",
                "not a static path of this package (Unknown(what='argument params'))",
                "pose_estimator declares no parameters ['templates_pth']"]
    text = "\n".join(problems)
    for e in expected:
        assert e in text, (e, problems)


def test_evaluator_reads_what_launch_files_write(tmp_path):
    """The static evaluator itself: helpers, defaults, joins, undeclared arguments, Unknown."""
    src = tmp_path / "x.launch.py"
    src.write_text(
        "from launch_ros.actions import Node\n"
        "def _cfg(name):\n"
        "    return PathJoinSubstitution([FindPackageShare('weak_template_ros'), 'config', name])\n"
        "def generate_launch_description():\n"
        "    ns = LaunchConfiguration('ns')\n"
        "    return LaunchDescription([\n"
        "        DeclareLaunchArgument('p', default_value=_cfg('a.yaml')),\n"
        "        Node(package='weak_template_ros', executable='twin_camera',\n"
        "             parameters=[LaunchConfiguration('p'), {'scene': {'width': 320}, 'seed': ns}])])\n")
    lf = LaunchFile(src)
    assert lf.used_arguments - set(lf.arguments) == {"ns"}
    (node,) = lf.nodes
    params = lf.eval(_arg(node, 99, "parameters"))
    assert params[0] == f"{SHARE}/config/a.yaml"
    assert flatten(params[1]) == {"scene.width": 320, "seed": Unknown("argument ns")}
    assert repo_path(params[0]) == ROOT / "config" / "a.yaml"
    assert node_config_class(console_scripts()["twin_camera"]).__name__ == "TwinCameraConfig"
