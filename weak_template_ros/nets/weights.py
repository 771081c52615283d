"""Weight files of the nets: one ``.pt`` per model with its format version, architecture, state,
a sha256 of the state and the model card; loading checks all of it.

File layout (``torch.save`` of a plain dict, read back with ``weights_only=True``, so loading a
file never runs code)::

    {"format": "weak_template_ros.nets.weights", "version": 1, "kind": "refiner" | "detector",
     "arch": {...architecture dataclass...}, "state_dict": {name: tensor}, "sha256": "...",
     "card": {...model card: data, degradations, seed, steps, held-out metrics, time, hardware...}}

The shipped weights live in ``weak_template_ros/nets/weights/`` (installed with the package),
each with its model card rendered as Markdown next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import zipfile
from pathlib import Path

import torch

from weak_template_ros.config import from_mapping
from weak_template_ros.errors import InputError
from weak_template_ros.nets.models import DetectorArch, DetectorNet, RefinerArch, RefinerNet

FORMAT = "weak_template_ros.nets.weights"
VERSION = 1
KINDS = {"refiner": (RefinerArch, RefinerNet), "detector": (DetectorArch, DetectorNet)}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped(kind: str) -> Path:
    """Path of the shipped weights of ``kind`` ("refiner" or "detector")."""
    if kind not in KINDS:
        raise InputError("kind", f"one of {sorted(KINDS)}", repr(kind))
    return WEIGHTS_DIR / f"{kind}.pt"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode() + repr((str(t.dtype), tuple(t.shape))).encode() + t.numpy().tobytes())
    return h.hexdigest()


def save_weights(path: str | Path, kind: str, model: torch.nn.Module, card: dict) -> Path:
    """Write ``model`` (a RefinerNet / DetectorNet) with its architecture and model card."""
    path = Path(path)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "version": VERSION, "kind": kind, "arch": dataclasses.asdict(model.arch),
            "state_dict": state, "sha256": state_digest(state), "card": json.loads(json.dumps(card))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def read_weights(path: str | Path, kind: str) -> dict:
    """Read and check a weight file (format, version, kind, checksum); the raw dict."""
    path = Path(path)
    where = str(path)
    if kind not in KINDS:
        raise InputError("kind", f"one of {sorted(KINDS)}", repr(kind))
    if not path.is_file():
        raise InputError(where, f"an existing {kind} weight file (.pt)", "no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError,
            AttributeError, KeyError, IndexError, TypeError) as exc:
        raise InputError(where, f"a {kind} weight file written by weak_template_ros",
                         f"an unreadable file ({type(exc).__name__})") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise InputError(where, f"format {FORMAT!r}", repr(got))
    if blob.get("version") != VERSION:
        raise InputError(where, f"weights format version {VERSION} (retrain or update the package)",
                         blob.get("version"))
    if blob.get("kind") != kind:
        raise InputError(where, f"{kind} weights", f"{blob.get('kind')} weights")
    state = blob.get("state_dict")
    if not isinstance(state, dict) or state_digest(state) != blob.get("sha256"):
        raise InputError(where, "a state matching the sha256 in the file", "damaged or edited weights")
    return blob


def load_model(path: str | Path | None, kind: str) -> tuple[torch.nn.Module, dict]:
    """Build the model of a weight file (default: the shipped one) in eval mode; (model, card).

    Raises
    ------
    InputError
        Missing or foreign file, another format version or kind, a damaged state, or tensors
        whose shapes do not match the architecture recorded in the file.
    """
    path = shipped(kind) if path is None else Path(path)
    blob = read_weights(path, kind)
    arch_cls, net_cls = KINDS[kind]
    arch = from_mapping(arch_cls, blob["arch"], source=f"{path}:arch")
    model = net_cls(arch)
    expected = model.state_dict()
    state = blob["state_dict"]
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or bad:
        raise InputError(str(path), f"tensors of the shapes its architecture {blob['arch']} gives",
                         "; ".join(filter(None, [f"missing {missing}" if missing else "",
                                                 f"unexpected {extra}" if extra else "",
                                                 f"shape mismatch {bad}" if bad else ""])))
    model.load_state_dict(state)
    model.eval()
    return model, blob.get("card", {})
