"""Where a Q-Former model loses what the image shows: linear probes for one image fact (default:
which half of the image holds the lesion, the synthetic set's "side") on the vision encoder's
tokens, their mean, the Q-Former's query outputs and what the LM receives (the projection).

Why: when a category stays at chance after training, this says whether the vision encoder lost
it, the Q-Former's fixed queries pooled it away, or the LM never learned to read it. It measured
the demo's base (README, "The Q-Former family"): the side was in the vision tokens (99.4%) and in
the projection (84.8%) while the model's answers were at chance, so the base got more steps.

    python benchmarks/qformer_probe.py RUN DATA [--fact lesion_image_half] [--train 1500 --test 600]

RUN is a qformer training run (or a BLIP-2 folder with its processor); DATA a synthetic dataset
(`edgevqa data synth`). Probes: logistic regression (L-BFGS, L2 1e-3) on standardised features of the
train split's images with a lesion, accuracy on the test split's. Prints a Markdown table, then
one line of JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def images_with(data: Path, split: str, fact: str, limit: int) -> list[tuple[Path, str]]:
    """(image, value of ``fact``) for the split's images that have a lesion, each image once."""
    seen: dict[str, str] = {}
    for line in (data / f"{split}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["meta"].get("lesion_count", 0) > 0 and fact in r["meta"]:
            seen.setdefault(r["image"], str(r["meta"][fact]))
    return [(data / p, v) for p, v in list(seen.items())[:limit]]


def features(model, processor, items: list[tuple[Path, str]]) -> dict:
    import torch
    from PIL import Image

    out: dict[str, list] = {"vision tokens": [], "vision mean": [], "queries": [], "projection": []}
    with torch.no_grad():
        for i in range(0, len(items), 64):
            chunk = items[i : i + 64]
            images = [Image.open(p).convert("RGB") for p, _ in chunk]
            pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
            v = model.vision_model(pixel_values=pixels).last_hidden_state
            queries = model.query_tokens.expand(len(chunk), -1, -1)
            q = model.qformer(query_embeds=queries, encoder_hidden_states=v).last_hidden_state
            projected = model.language_projection(q)
            for key, x in zip(out, (v.flatten(1), v.mean(1), q.flatten(1), projected.flatten(1))):
                out[key].append(x)
    return {k: torch.cat(v) for k, v in out.items()}


def probe(x, y, xt, yt) -> tuple[float, float]:
    """Train and test accuracy of a logistic regression (classes: y's values, one-vs-rest)."""
    import torch

    mu, sd = x.mean(0), x.std(0) + 1e-6
    x, xt = (x - mu) / sd, (xt - mu) / sd
    classes = int(max(y.max(), yt.max())) + 1
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = lambda a, t: float(((a @ w + b).argmax(1) == t).float().mean())  # noqa: E731
        return acc(x, y), acc(xt, yt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--fact", default="lesion_image_half", help="a key of the records' meta")
    ap.add_argument("--train", type=int, default=1500, help="train images probed")
    ap.add_argument("--test", type=int, default=600, help="test images scored")
    args = ap.parse_args()

    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    folder = args.run / "model" if (args.run / "model").is_dir() else args.run
    model = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    processor = Blip2Processor.from_pretrained(folder)
    train = images_with(args.data, "train", args.fact, args.train)
    test = images_with(args.data, "test", args.fact, args.test)
    values = sorted({v for _, v in train + test})
    label = lambda items: torch.tensor([values.index(v) for _, v in items])  # noqa: E731
    ftr, fte = features(model, processor, train), features(model, processor, test)
    majority = max(sum(v == c for _, v in test) for c in values) / len(test)
    rows = {}
    print(f"| {args.fact} probe on | dims | train | test |\n|---|---|---|---|")
    for key in ftr:
        tr, te = probe(ftr[key], label(train), fte[key], label(test))
        rows[key] = {"dims": ftr[key].shape[1], "train": tr, "test": te}
        print(f"| {key} | {ftr[key].shape[1]} | {tr:.1%} | {te:.1%} |")
    print(f"| majority class | | | {majority:.1%} |")
    report = {"run": str(args.run), "fact": args.fact, "n_train": len(train), "n_test": len(test)}
    print(json.dumps({**report, "majority": majority, "probes": rows}))


if __name__ == "__main__":
    main()
