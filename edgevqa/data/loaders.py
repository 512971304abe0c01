"""Public radiology datasets -> our records: detect the layout, read, check, split, convert.

A source is a local folder or a Hugging Face dataset id (downloaded with ``huggingface_hub``, then
read like a folder). Its layout picks the reader (see :data:`FORMATS`); every reader's rows then go
through the same steps:

1. Malformed rows (missing or unreadable image, empty question, answer or caption) are skipped and
   reported with their file and row number, never silently dropped. Rows left out on purpose by a
   filter (SLAKE's Chinese questions, ROCOv2's modality and caption-length filters) are counted.
2. Images are identified by the sha256 of their bytes, so an image repeated across rows is one
   image, and a converted dataset stores it once (``images/<sha256[:16]>.<ext>``, original bytes).
3. No image is in two splits. Official test splits are kept as published; a train (or val) row
   whose image is also in test (or val) is skipped and reported. A missing val split is carved
   from train, and a dataset without splits is split 70/10/20, both by image and stratified by
   answer type and category (:mod:`edgevqa.data.splits`), with a fixed seed.

Example:
    >>> loaded = load_dataset("flaviagiammarino/vqa-rad")  # doctest: +SKIP
    >>> {s: len(r) for s, r in loaded.splits.items()}         # doctest: +SKIP
    >>> convert("data/SLAKE", "data/slake")                    # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgevqa import atomic
from edgevqa.data.captions import SUFFIX, CaptionRecord, load_captions, write_captions
from edgevqa.data.records import SPLITS, VQARecord, load_split, write_split
from edgevqa.data.sources import hf_parquet as hf
from edgevqa.data.sources import pmc_vqa, rocov2, slake
from edgevqa.data.sources.common import Item, LoadOptions
from edgevqa.data.splits import DEFAULT_FRACTIONS, VAL_FROM_TRAIN, assign_splits
from edgevqa.errors import InputError, MissingDependencyError

log = logging.getLogger(__name__)

Record = VQARecord | CaptionRecord
ImageSink = Callable[[str, bytes], None]  # (relative name, encoded bytes) of each new image


@dataclass(frozen=True)
class Format:
    name: str
    kind: str  # "vqa" or "captions"
    detect: Callable[[Path], bool]
    read: Callable[[Path, LoadOptions], Iterable[Item]] | None  # None: our own layout
    hub_id: str = ""  # where the public dataset lives on the Hugging Face Hub


def _has_own(root: Path, suffix: str) -> bool:
    return any((root / f"{s}{suffix}").is_file() for s in SPLITS)


# In detection order: our own layouts first; MedPix before VQA-RAD (same columns, capitalised splits).
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("edgevqa", "vqa", lambda r: _has_own(r, ".jsonl"), None),
        Format("edgevqa-captions", "captions", lambda r: _has_own(r, SUFFIX), None),
        Format("slake", "vqa", slake.detect, slake.read, "BoKelvin/SLAKE"),
        Format("pmc-vqa", "vqa", pmc_vqa.detect, pmc_vqa.read, "xmcmic/PMC-VQA"),
        Format("rocov2", "captions", rocov2.detect, rocov2.read, "eltorio/ROCOv2-radiology"),
        Format("medpix", "vqa", hf.detect_medpix, hf.read_medpix, "adishourya/MEDPIX-ShortQA"),
        Format("vqa-rad", "vqa", hf.detect_vqa_rad, hf.read_vqa_rad, "flaviagiammarino/vqa-rad"),
    )
}


@dataclass(frozen=True)
class Skipped:
    """A malformed source row, left out."""

    file: str
    row: int  # 1-based record number in `file`
    reason: str

    def __str__(self) -> str:
        return f"{self.file} row {self.row}: {self.reason}"


@dataclass
class Loaded:
    """A dataset read into our records, with what was left out and why."""

    format: str
    kind: str  # "vqa" or "captions"
    source: str  # the folder or hub id given
    root: Path  # the folder read
    splits: dict[str, list[Any]]  # split -> VQARecords or CaptionRecords
    skipped: list[Skipped] = field(default_factory=list)
    filtered: dict[str, int] = field(default_factory=dict)  # filter reason -> rows


# ---------------------------------------------------------------------------- source and format


def resolve(source: str | Path) -> Path:
    """A local dataset folder, or a Hugging Face dataset id downloaded to the hub cache.

    Raises:
        InputError: neither a folder nor a reachable hub dataset (one line says which).
        MissingDependencyError: a hub id, but huggingface_hub is not installed.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise InputError(f"{source} is a file; pass the dataset folder (or a Hugging Face dataset id)")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) or str(source).startswith("."):
        raise InputError(
            f"dataset not found: {source} is neither a folder nor a Hugging Face id (owner/name)"
        )
    return _download(str(source))


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise MissingDependencyError(
            f"{repo_id} is not a local folder, and downloading it from the Hugging Face Hub needs "
            "huggingface_hub: pip install huggingface_hub (or pip install 'edgevqa[datasets]')"
        ) from None
    try:
        path = Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))  # shows its own progress
    except RepositoryNotFoundError:  # also gated datasets
        raise InputError(
            f"{repo_id} is neither a local folder nor a dataset on the Hugging Face Hub you can access "
            "(a gated one needs `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise InputError(
            f"cannot download {repo_id}: the Hugging Face Hub is unreachable (offline?) and it is not in "
            "the local cache; download it where there is network and pass its folder"
        ) from None
    except (HfHubHTTPError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"cannot download {repo_id} from the Hugging Face Hub: {first}") from None
    log.info("%s: read from %s", repo_id, path)
    return path


def detect_format(root: Path) -> str:
    """The name of the first format in :data:`FORMATS` whose layout ``root`` has.

    Raises:
        InputError: no known layout (the message lists them).
    """
    for f in FORMATS.values():
        if f.detect(root):
            return f.name
    raise InputError(f"{root}: not a dataset layout edgevqa knows; pass --format ({', '.join(FORMATS)})")


def check_format(name: str) -> str:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise InputError(f"unknown format {name!r}{hint} (known: {', '.join(FORMATS)})")
    return name


def _open(source: str | Path, fmt: str | None) -> tuple[Path, Format]:
    if fmt is not None:
        check_format(fmt)
    hub = {f.hub_id.lower(): f.name for f in FORMATS.values() if f.hub_id}
    root = resolve(source)
    return root, FORMATS[fmt or hub.get(str(source).lower()) or detect_format(root)]


# ---------------------------------------------------------------------------- load


def load_dataset(
    source: str | Path,
    fmt: str | None = None,
    opts: LoadOptions | None = None,
    image_sink: ImageSink | None = None,
) -> Loaded:
    """Read a dataset folder or hub id into records, split by image, with a report of what was left out.

    Args:
        source: a folder, or a Hugging Face dataset id such as ``flaviagiammarino/vqa-rad``.
        fmt: one of :data:`FORMATS`; None detects it from the layout.
        opts: seed, SLAKE languages, ROCOv2 caption length.
        image_sink: called once per distinct image with its relative name (``images/<hash>.<ext>``,
            which is the records' ``image``) and its bytes; :func:`convert` writes them with it.

    Returns:
        A :class:`Loaded` with every split of :data:`~edgevqa.data.records.SPLITS` (maybe empty).

    Raises:
        InputError: no such folder or dataset, an unknown format, or a file that cannot be read at all.
    """
    opts = opts or LoadOptions()
    root, f = _open(source, fmt)
    if f.read is None:
        if image_sink is not None:
            raise InputError(f"{source} is already in edgevqa's own layout ({f.name}); nothing to convert")
        return _load_own(str(source), root, f)
    rows, skipped, filtered = _collect(f.read(root, opts), image_sink)
    splits, leaked = _arrange(rows, opts.seed)
    loaded = Loaded(f.name, f.kind, str(source), root, splits, skipped + leaked, dict(filtered))
    if loaded.skipped:
        log.warning("%s: %s", source, skipped_summary(loaded.skipped, limit=3))
    return loaded


def _load_own(source: str, root: Path, f: Format) -> Loaded:
    """Our own layout: records as written (a missing image is reported, like any source's)."""
    splits: dict[str, list[Any]] = {s: [] for s in SPLITS}
    skipped = []
    for s in SPLITS:
        name = f"{s}.jsonl" if f.kind == "vqa" else f"{s}{SUFFIX}"
        if not (root / name).is_file():
            continue
        for n, rec in enumerate(load_split(root, s) if f.kind == "vqa" else load_captions(root, s), 1):
            if rec.image_path(root).is_file():
                splits[s].append(rec)
            else:
                skipped.append(Skipped(name, n, f"image {rec.image} not found"))
    return Loaded(f.name, f.kind, source, root, splits, skipped)


@dataclass(frozen=True)
class _Row:
    sha: str  # the image's content hash: the unit of splitting
    file: str
    row: int
    record: Any


_EXT = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif"}


def _image_name(data: bytes, sha: str) -> str:
    """Decode the image with the checks training and the runtime apply; its name in a converted set.

    Raises:
        InputError: not a readable image.
    """
    from PIL import Image

    from edgevqa.runtime.images import load_image

    load_image(data)
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format or "img"
    return f"images/{sha[:16]}{_EXT.get(fmt, '.' + fmt.lower())}"


def _collect(
    items: Iterable[Item], sink: ImageSink | None
) -> tuple[dict[str, list[_Row]], list[Skipped], Counter[str]]:
    rows: dict[str, list[_Row]] = defaultdict(list)
    skipped: list[Skipped] = []
    filtered: Counter[str] = Counter()
    names: dict[str, str] = {}  # sha -> image name, or "!reason" for an unreadable image
    for it in items:
        if it.filtered:
            filtered[it.filtered] += 1
            continue
        problem = it.problem or _empty_field(it.record) or ("" if it.image else "missing image")
        if not problem:
            sha = hashlib.sha256(it.image).hexdigest()
            if sha not in names:
                try:
                    names[sha] = _image_name(it.image, sha)
                except InputError as e:
                    names[sha] = "!unreadable image: " + str(e).replace("<image bytes> ", "it ")
                else:
                    if sink is not None:
                        sink(names[sha], it.image)
            problem = names[sha][1:] if names[sha].startswith("!") else ""
        if problem:
            skipped.append(Skipped(it.file, it.row, problem))
            continue
        rec = replace(it.record, image=names[sha], meta={**it.record.meta, "image_sha256": sha})
        rows[it.split].append(_Row(sha, it.file, it.row, rec))
    return rows, skipped, filtered


def _empty_field(rec: Record | None) -> str:
    if isinstance(rec, CaptionRecord):
        return "" if rec.caption.strip() else "empty caption"
    if rec is None or not rec.question.strip():
        return "empty question"
    return "" if rec.answer.strip() else "empty answer"


# ---------------------------------------------------------------------------- splits

_PRIORITY = {"train": 0, "val": 1, "test": 2}  # an image in two splits stays in the later one


def _arrange(rows: dict[str, list[_Row]], seed: int) -> tuple[dict[str, list[Any]], list[Skipped]]:
    """Official splits made disjoint by image (test wins), val carved from train, or 70/10/20."""
    out: dict[str, list[Any]] = {s: [] for s in SPLITS}
    if set(rows) in ({"all"}, {"train"}):  # no official split (a lone "train" is everything)
        rows = _by_group(rows.pop("all", None) or rows.pop("train"), DEFAULT_FRACTIONS, seed)
    owner: dict[str, str] = {}
    for s in sorted(rows, key=_PRIORITY.__getitem__):
        owner.update((r.sha, s) for r in rows[s])
    leaked = [
        Skipped(r.file, r.row, f"its image is also in the {owner[r.sha]} split")
        for s in rows
        for r in rows[s]
        if owner[r.sha] != s
    ]
    kept = {s: [r for r in rs if owner[r.sha] == s] for s, rs in rows.items()}
    if not kept.get("val") and kept.get("train"):
        kept.update(_by_group(kept["train"], VAL_FROM_TRAIN, seed))
    for s, rs in kept.items():
        out[s] = [r.record for r in rs]
    return out, leaked


def _by_group(rows: list[_Row], fractions: dict[str, float], seed: int) -> dict[str, list[_Row]]:
    """Split rows by image (all rows of an image together), stratified; row order is kept."""
    groups: dict[str, Counter[tuple[str, ...]]] = {}
    for r in rows:
        cells = groups.setdefault(r.sha, Counter({("image",): 1}))
        rec = r.record
        if isinstance(rec, CaptionRecord):
            cells[("modality", rec.modality)] += 1
        else:
            cells[(rec.answer_type, rec.category)] += 1
            if rec.answer_type == "closed":
                cells[(rec.answer_type, rec.category, rec.answer)] += 1
    split_of = dict(zip(groups, assign_splits(list(groups.values()), fractions, seed)))
    out: dict[str, list[_Row]] = {s: [] for s in fractions}
    for r in rows:
        out[split_of[r.sha]].append(r)
    return out


# ---------------------------------------------------------------------------- convert


def convert(
    source: str | Path,
    out: str | Path,
    fmt: str | None = None,
    opts: LoadOptions | None = None,
    overwrite: bool = False,
) -> Loaded:
    """Write a dataset in our layout: ``{split}.jsonl`` (or ``{split}.captions.jsonl``), ``images/``
    and ``dataset.json`` (counts, options, filtered and skipped rows), all or nothing.

    Raises:
        InputError: as :func:`load_dataset`; or `out` exists, is not empty and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    opts = opts or LoadOptions()
    with atomic.directory(out, overwrite=overwrite) as tmp:

        def sink(name: str, data: bytes) -> None:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)  # inside the temporary directory: atomic as a whole

        loaded = load_dataset(source, fmt, opts, image_sink=sink)
        for s in SPLITS:
            (write_split if loaded.kind == "vqa" else write_captions)(tmp, s, loaded.splits[s])
        atomic.write_json(tmp / "dataset.json", {**summary(loaded), "options": asdict(opts)})
    return loaded


# ---------------------------------------------------------------------------- report


def summary(loaded: Loaded) -> dict[str, Any]:
    """Counts per split and group (answer type/category, or modality), filtered and skipped rows."""
    key = (lambda r: r.group) if loaded.kind == "vqa" else (lambda r: r.modality)
    return {
        "format": loaded.format,
        "kind": loaded.kind,
        "source": loaded.source,
        "splits": {
            s: {"records": len(rs), "images": len({r.image for r in rs})} for s, rs in loaded.splits.items()
        },
        "groups": {s: dict(sorted(Counter(map(key, rs)).items())) for s, rs in loaded.splits.items()},
        "filtered": loaded.filtered,
        "skipped": [str(s) for s in loaded.skipped],
    }


def skipped_summary(skipped: list[Skipped], limit: int = 20) -> str:
    """``skipped 3 rows: train.json row 17: empty answer; ...`` (the first `limit` of them)."""
    n = len(skipped)
    head = f"skipped {n} row{'' if n == 1 else 's'}"
    more = f"; ... and {n - limit} more" if n > limit else ""
    return head + (": " + "; ".join(map(str, skipped[:limit])) + more if skipped else "")


def _table(header: list[str], rows: Iterator[list[Any]] | list[list[Any]]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = [(str.ljust if i == 0 else str.rjust) for i in range(len(header))]
    return "\n".join("  ".join(f(c, w) for f, c, w in zip(fmt, r, widths)).rstrip() for r in cells)


def describe(loaded: Loaded) -> str:
    """Plain-text report: records and images per split, per answer type (or modality) and group."""
    sp = loaded.splits
    where = "" if Path(loaded.source) == loaded.root else f", read from {loaded.root}"
    lines = [f"{loaded.source}: {loaded.format} ({loaded.kind}){where}", ""]
    types = ["closed", "open"] if loaded.kind == "vqa" else []
    rows = [
        [s, len(rs), len({r.image for r in rs}), *(sum(r.answer_type == t for r in rs) for t in types)]
        for s, rs in sp.items()
    ]
    total = [sum(r[i] for r in rows) for i in range(1, len(rows[0]))]
    lines.append(_table(["split", "records", "images", *types], [*rows, ["total", *total]]))
    key = (lambda r: r.group) if loaded.kind == "vqa" else (lambda r: r.modality)
    counts = {s: Counter(map(key, rs)) for s, rs in sp.items()}
    groups = sorted(set().union(*counts.values()))
    label = "answer_type/category" if loaded.kind == "vqa" else "modality"
    body = [[g, *(counts[s][g] for s in sp), sum(counts[s][g] for s in sp)] for g in groups]
    lines += ["", _table([label, *sp, "total"], body)]
    if loaded.filtered:
        n = sum(loaded.filtered.values())
        kinds = "; ".join(f"{k}: {v}" for k, v in loaded.filtered.items())
        lines += ["", f"filtered {n} row{'' if n == 1 else 's'}: {kinds}"]
    lines += ["", skipped_summary(loaded.skipped)]
    return "\n".join(lines)
