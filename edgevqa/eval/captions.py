"""``edgevqa eval RUN --data CAPTIONS``: BLEU-1..4, ROUGE-L and CIDEr-D of a captioning run.

A caption dataset (``{split}.captions.jsonl``) is evaluated per image: the run captions each
distinct image once (beam search as in paper 002, ``train/caption.py``) and every caption of that
image in the split is a reference. Metrics are :mod:`edgevqa.eval.caption_metrics`; CIDEr-D's idf comes
from the evaluated references, so compare CIDEr only between models evaluated on the same split.

Caption models are training runs of ``--recipe caption`` (and ``dapt`` / ``dapt-sd``, whose text
decoder learns the same image-grounded captioning loss). Bundles hold the VQA graphs only.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic
from edgevqa.data.captions import CaptionRecord, captions_path, load_captions
from edgevqa.errors import InputError
from edgevqa.eval.caption_metrics import evaluate_captions

log = logging.getLogger("edgevqa.eval")

CAPTION_MODEL_RECIPES = ("caption", "dapt", "dapt-sd")
COLUMNS = (("bleu_1", "BLEU-1"), ("bleu_2", "BLEU-2"), ("bleu_3", "BLEU-3"), ("bleu_4", "BLEU-4"),
           ("rouge_l", "ROUGE-L"), ("cider", "CIDEr"))  # fmt: skip


def run_recipe(model: str | Path) -> str:
    """The recipe a training run was trained with (runs from before recipes existed: default)."""
    return str(json.loads((Path(model) / "config.json").read_text()).get("recipe", "default"))


def is_caption_task(model: str | Path, kind: str, data: str | Path, split: str) -> bool:
    """Evaluate captions: the folder has ``split`` captions, and no questions or a caption model."""
    root = Path(data)
    if not captions_path(root, split).is_file():
        return False
    no_questions = not (root / f"{split}.jsonl").is_file()
    return no_questions or (kind == "run" and run_recipe(model) in CAPTION_MODEL_RECIPES)


def check_caption_model(model: str | Path, kind: str) -> str:
    """The run's recipe, if it is a caption model.

    Raises:
        InputError: a bundle, or a run of a VQA recipe.
    """
    if kind == "bundle":
        raise InputError(
            f"{model} is a bundle, which answers questions only; evaluate captions with the training run "
            "of `edgevqa train --recipe caption`"
        )
    recipe = run_recipe(model)
    if recipe not in CAPTION_MODEL_RECIPES:
        raise InputError(
            f"{model} is a {recipe}-recipe run (a VQA model); caption evaluation needs a run of "
            f"--recipe {' / '.join(CAPTION_MODEL_RECIPES)}"
        )
    return recipe


def by_image(records: list[CaptionRecord], root: str | Path) -> dict[Path, list[str]]:
    """Reference captions per distinct image, in first-seen order."""
    refs: dict[Path, list[str]] = {}
    for r in records:
        refs.setdefault(r.image_path(root), []).append(r.caption)
    return refs


def caption_images(run: Path, images: list[Path], threads: int = 0, batch: int = 16) -> list[str]:
    """One caption per image from the run (any LoRA merged), by paper 002's beam search."""
    import torch

    from edgevqa.export.merge import load_run
    from edgevqa.train.caption import generate_captions
    from edgevqa.train.data import ImageCache

    if threads:
        torch.set_num_threads(threads)
    loaded = load_run(run).loaded
    cache = ImageCache(loaded.image)
    out: list[str] = []
    for s in range(0, len(images), batch):
        pixels = torch.from_numpy(np.stack([cache.get(p) for p in images[s : s + batch]]))
        out += generate_captions(loaded.model.eval(), loaded.tokenizer, pixels)
    return out


def run_caption_eval(cfg: Any, kind: str) -> dict[str, Any]:
    """Caption the split's images with ``cfg.model`` and score them; writes eval.json, eval.md and
    predictions.jsonl to ``cfg.out_dir``. ``cfg`` is an :class:`edgevqa.eval.evaluate.EvalConfig`."""
    recipe = check_caption_model(cfg.model, kind)
    records = load_captions(cfg.data, cfg.split)
    refs = by_image(records[: cfg.limit] if cfg.limit else records, cfg.data)
    log.info("eval: captioning %d %s images of %s with %s", len(refs), cfg.split, cfg.data, cfg.model)
    images = list(refs)
    preds = caption_images(Path(cfg.model), images, cfg.threads)
    report = {
        "task": "captions",
        "model": str(cfg.model),
        "engine": {"kind": "run", "backend": "pytorch", "recipe": recipe},
        "data": str(cfg.data),
        "split": cfg.split,
        "n_images": len(images),
        "n_captions": sum(len(v) for v in refs.values()),
        "scores": evaluate_captions(preds, [refs[p] for p in images]),
    }
    rows = [
        json.dumps({"image": str(p), "prediction": c, "references": refs[p]}) + "\n"
        for p, c in zip(images, preds)
    ]
    out = cfg.out_dir
    atomic.write_json(out / "eval.json", report)
    atomic.write_text(out / "eval.md", markdown_captions(report) + "\n")
    atomic.write_text(out / "predictions.jsonl", "".join(rows))
    return report


def markdown_captions(report: dict[str, Any]) -> str:
    s = report["scores"]
    name = f"{Path(report['model']).name} (PyTorch, {report['engine']['recipe']})"
    return "\n".join(
        [
            "# edgevqa eval (captions)\n",
            f"`{report['model']}` captioned {report['n_images']} images of the {report['split']} split of "
            f"`{report['data']}` ({report['n_captions']} reference captions). BLEU-n: corpus level with "
            "brevity penalty; ROUGE-L: LCS F-measure, beta 1.2; CIDEr: CIDEr-D (n-grams 1-4, tf-idf with "
            "idf from these references, Gaussian length penalty sigma 6, x10).\n",
            "| Method | " + " | ".join(label for _, label in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 1) + "|",
            f"| {name} | " + " | ".join(f"{s[k]:.3f}" for k, _ in COLUMNS) + " |",
        ]
    )
