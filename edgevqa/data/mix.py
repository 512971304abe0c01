"""A fixed-ratio mixture of dataset folders (e.g. the data mix of an annealing phase), seeded.

``mix([Part("data/slake", 0.8), Part("data/synth", 0.2)], "data/mix")`` writes a dataset in which
every split holds the sources in the given ratio, shuffled together:

* train has ``size`` records (default: the largest mixture no source has to repeat records for);
  a source asked for more records than it has repeats all of them as evenly as possible (each k or
  k+1 times) and samples without replacement only the remainder;
* val and test are never repeated: they are the largest mixture at these ratios without repeats;
* every record keeps its provenance in ``meta["source"]`` (and its id gets the source as prefix);
  images are hard-linked (else copied) under ``sources/<name>/``.

Example:
    >>> parts = parse_parts(["data/slake:0.8", "data/synth:0.2"])  # doctest: +SKIP
    >>> mix(parts, "data/mix", size=10_000, seed=0)["splits"]         # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic
from edgevqa.data.files import carry_images
from edgevqa.data.records import SPLITS, VQARecord, load_split, write_split
from edgevqa.errors import InputError


@dataclass(frozen=True)
class Part:
    path: Path
    ratio: float
    name: str = ""  # provenance label (meta["source"]); default: the folder's name, made unique


def parse_parts(specs: list[str]) -> list[Part]:
    """``["data/a:0.8", "data/b:0.2"]`` -> parts. Ratios must be positive and sum to 1.

    Raises:
        InputError: a spec without ``:RATIO``, a ratio that is not a positive number, ratios that
            do not sum to 1, a folder that does not exist or is given twice.
    """
    if not specs:
        raise InputError("nothing to mix: give DIR:RATIO pairs, e.g. data/slake:0.8 data/synth:0.2")
    parts, names = [], set()
    for spec in specs:
        path, sep, ratio = spec.rpartition(":")
        try:
            r = float(ratio)
        except ValueError:
            r = math.nan
        if not sep or not path or not math.isfinite(r) or r <= 0:
            raise InputError(f"expected DIR:RATIO with a positive ratio (e.g. data/slake:0.8), got {spec!r}")
        if not Path(path).is_dir():
            raise InputError(f"{path}: no such dataset folder (in {spec!r})")
        if any(Path(path).resolve() == p.path.resolve() for p in parts):
            raise InputError(f"{path} is given twice")
        name = base = Path(path).resolve().name
        k = 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.add(name)
        parts.append(Part(Path(path), r, name))
    total = sum(p.ratio for p in parts)
    if abs(total - 1.0) > 1e-6:
        listed = " + ".join(f"{p.ratio:g}" for p in parts)
        raise InputError(f"ratios must sum to 1, got {total:g} ({listed})")
    return parts


def counts(ratios: list[float], total: int) -> list[int]:
    """``total`` split by ``ratios`` into integers (largest remainders; ties to the earlier part)."""
    raw = [r * total for r in ratios]
    n = [math.floor(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: (-(raw[i] - n[i]), i))[: total - sum(n)]:
        n[i] += 1
    return n


def sample(n: int, available: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices into ``available`` records: whole passes over them, then a sample without replacement."""
    if available == 0:
        return []
    full, rest = divmod(n, available)
    idx = [i for _ in range(full) for i in range(available)]
    return idx + sorted(rng.choice(available, size=rest, replace=False).tolist())


def _pick(part: Part, recs: list[VQARecord], n: int, rng: np.random.Generator) -> list[VQARecord]:
    """``n`` of a part's records, with provenance; a repeated record's id gets ``~2``, ``~3``, ..."""
    out, seen = [], {}
    for i in sample(n, len(recs), rng):
        r = recs[i]
        k = seen[r.id] = seen.get(r.id, 0) + 1
        rid = f"{part.name}/{r.id}" + (f"~{k}" if k > 1 else "")
        out.append(replace(r, id=rid, meta={**r.meta, "source": part.name}))
    return out


def mix(
    parts: list[Part], out: str | Path, size: int | None = None, seed: int = 0, overwrite: bool = False
) -> dict[str, Any]:
    """Write the mixture of ``parts`` to ``out`` (see the module docstring); returns ``dataset.json``.

    Raises:
        InputError: a source without a split file, no train record for a part, a bad size, or a
            non-empty `out`.
    """
    out = Path(out)
    if size is not None and size < 1:
        raise InputError(f"--size must be a positive number of train records, got {size}")
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    data = {s: [load_split(p.path, s) for p in parts] for s in SPLITS}
    for p, rs in zip(parts, data["train"]):
        if not rs:
            raise InputError(f"{p.path} has no train records to mix")
    summary: dict[str, Any] = {"mixer": "edgevqa.data.mix", "seed": seed, "size": size, "splits": {}}
    summary["parts"] = [{"name": p.name, "path": str(p.path), "ratio": p.ratio} for p in parts]
    with atomic.directory(out, overwrite=overwrite) as tmp:
        for j, s in enumerate(SPLITS):
            rng = np.random.default_rng([seed, j])
            fit = min(math.floor(len(rs) / p.ratio + 1e-9) for p, rs in zip(parts, data[s]))
            total = size if s == "train" and size else fit
            picked: list[VQARecord] = []
            for p, rs, n in zip(parts, data[s], counts([p.ratio for p in parts], total)):
                picked += carry_images(_pick(p, rs, n, rng), p.path, tmp, prefix=f"sources/{p.name}/")
            write_split(tmp, s, [picked[i] for i in rng.permutation(len(picked))])
            by = {p.name: sum(r.meta["source"] == p.name for r in picked) for p in parts}
            summary["splits"][s] = {"records": len(picked), "by_source": by}
        atomic.write_json(tmp / "dataset.json", summary)
    return summary
