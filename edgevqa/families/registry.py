"""The registry of model families: the only place a family is chosen by name.

Consulted at four points: loading a base for training (``family_of_base``), the exporter (the
run's or model folder's family), ``VQAPipeline.from_bundle`` (the manifest's family) and
``bench --arch`` (``family_of_arch``). Each side imports its family module through ``side``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from edgevqa.errors import BundleError, InputError
from edgevqa.families import blip_vqa, paligemma, qformer
from edgevqa.families.spec import FamilySpec

_REGISTRY: dict[str, FamilySpec] = {s.family: s for s in (blip_vqa.SPEC, paligemma.SPEC, qformer.SPEC)}


def get(family: str) -> FamilySpec:
    if family not in _REGISTRY:
        raise InputError(f"unknown model family {family!r}; available: {', '.join(names())}")
    return _REGISTRY[family]


def names() -> list[str]:
    return sorted(_REGISTRY)


def side(family: str, which: str) -> ModuleType:
    """The family's module on one side (train, export, runtime), imported on first use."""
    return importlib.import_module(get(family).module(which))


def for_bundle(family: str) -> FamilySpec:
    """The family of a bundle's manifest; an unknown one is a bundle this edgevqa cannot run."""
    if family not in _REGISTRY:
        raise BundleError(
            f"bundle family {family!r} is not supported by this edgevqa (it runs: {', '.join(names())}); "
            "upgrade edgevqa or re-export the bundle"
        )
    return _REGISTRY[family]


def family_of_preset(name: str) -> str | None:
    return next((s.family for s in _REGISTRY.values() if name in s.presets), None)


def family_of_arch(arch: str) -> str:
    for s in _REGISTRY.values():
        if arch in s.archs:
            return s.family
    archs = [a for s in _REGISTRY.values() for a in s.archs]
    raise InputError(f"unknown architecture {arch!r}; available: {', '.join(archs)}")


def family_of_model_type(model_type: str, source: str) -> str:
    """The family that loads a Hugging Face ``model_type``; anything else is refused."""
    for s in _REGISTRY.values():
        if model_type in s.model_types:
            return s.family
    known = sorted(t for s in _REGISTRY.values() for t in s.model_types)
    raise InputError(
        f"{source} is a {model_type!r} model; edgevqa loads {', '.join(known)} "
        f"(families: {', '.join(names())})"
    )


def family_of_folder(folder: Path) -> str | None:
    """The family of a local folder: a RUN (its config.json names it) or a save_pretrained model
    folder (its config.json's model_type); None when the folder holds neither."""
    run_cfg, model_cfg = folder / "config.json", folder / "model" / "config.json"
    for path in (model_cfg, run_cfg):
        if not path.is_file():
            continue
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path} is not readable JSON ({type(e).__name__})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} is not a config")
        if "model_type" in raw:
            return family_of_model_type(str(raw["model_type"]), str(folder))
        if path == run_cfg and "recipe" in raw:  # a RUN folder's TrainConfig
            return str(raw.get("family", "blip-vqa"))  # runs before families were all BLIP
    return None
