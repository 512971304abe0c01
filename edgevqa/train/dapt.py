"""Domain-adaptive pretraining (paper 000 §3.3) with BLIP's three objectives, on the VQA model's parts.

``BlipForQuestionAnswering`` has no ITC projections and no ITM head, so :class:`DAPTModel` adds
them (``vision_proj``, ``text_proj``, ``itm_head``) around the VQA model's own ``vision_model``,
``text_encoder`` and ``text_decoder``. The VQA model is a submodule, not a copy: what DAPT learns
is the VQA model's weights, and ``RUN/model/`` is an ordinary VQA model folder that
``edgevqa train --recipe vqa --init RUN`` starts from. The heads are kept in
``RUN/dapt_heads.safetensors`` (a later dapt run with ``--init RUN`` continues them).

* ITC: image [CLS] -> vision_proj, text [CLS] of the unimodal text-encoder pass -> text_proj, both
  L2-normalised; cosine similarity / tau (0.07, fixed: no momentum encoder, §3.3.2); symmetric
  cross-entropy, L = (L_i2t + L_t2i) / 2.
* ITM: for every image a negative caption, for every caption a negative image, drawn with
  probabilities softmax(similarity) over the batch with the positives excluded (BLIP's hard
  negatives); itm_head on the [CLS] of the multimodal text-encoder pass (cross-attending to the
  image); 2-way cross-entropy over the B positive and 2B negative pairs.
* LM: the text decoder's captioning loss, cross-attending to the image embeddings (caption.py).

Positives are pairs from the same image or with the same caption text (a batch can hold the same
caption twice); ITC spreads its target over them and ITM never draws them as negatives. The text
encoder reads [CLS]-led captions, as it reads questions in the VQA model. Negatives come from a
numpy generator seeded by (seed, step, micro-batch), so a resumed run draws the same ones.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgevqa import atomic
from edgevqa.config import TrainConfig
from edgevqa.data.captions import load_optional_captions
from edgevqa.errors import InputError
from edgevqa.train import distill, models
from edgevqa.train.caption import (
    Captions,
    caption_loss,
    encode_captions,
    make_caption_batch,
    max_caption_tokens,
)
from edgevqa.train.data import ImageCache, to_device

log = logging.getLogger("edgevqa.train")

ITC_TEMPERATURE = 0.07  # §3.3.2
HEADS_FILE = "dapt_heads.safetensors"
HEADS = ("vision_proj", "text_proj", "itm_head")
_VAL_STREAM = 0x5EED  # seeds the validation negatives apart from the training ones


def itc_loss(sim: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of the [B, B] image-to-text logits; targets spread over positives."""
    pos = positive.to(sim.dtype)
    i2t = -(F.log_softmax(sim, dim=1) * (pos / pos.sum(1, keepdim=True))).sum(1).mean()
    t2i = -(F.log_softmax(sim.t(), dim=1) * (pos.t() / pos.t().sum(1, keepdim=True))).sum(1).mean()
    return (i2t + t2i) / 2


def sample_negatives(sim: np.ndarray, positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row, a column drawn with probability softmax(row) over the non-positive columns.

    A row with no negative at all (every other item in the batch is a positive: the same caption
    throughout) draws uniformly from the other columns; BLIP's code assumes this never happens.
    """
    z = np.exp(sim - sim.max(axis=1, keepdims=True))
    w = np.where(positive, 0.0, z)
    out = np.empty(len(sim), dtype=np.int64)
    for i, row in enumerate(w):
        if row.sum() <= 0:
            row = np.ones(len(row))
            row[i] = 0.0
        out[i] = rng.choice(len(row), p=row / row.sum())
    return out


class DAPTModel(nn.Module):
    """BLIP's pretraining heads around a BlipForQuestionAnswering (``self.vqa``, shared, not copied)."""

    def __init__(self, vqa: nn.Module):
        super().__init__()
        c = vqa.config
        self.vqa = vqa
        self.vision_proj = nn.Linear(c.vision_config.hidden_size, c.image_text_hidden_size)
        self.text_proj = nn.Linear(c.text_config.hidden_size, c.image_text_hidden_size)
        self.itm_head = nn.Linear(c.text_config.hidden_size, 2)
        for m in (self.vision_proj, self.text_proj, self.itm_head):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def features(self, b: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image embeddings and the normalised ITC features of images and (unimodal) texts."""
        image = self.vqa.vision_model(pixel_values=b["pixel_values"]).last_hidden_state
        text = self.vqa.text_encoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        img_feat = F.normalize(self.vision_proj(image[:, 0]).float(), dim=-1)
        txt_feat = F.normalize(self.text_proj(text.last_hidden_state[:, 0]).float(), dim=-1)
        return image, img_feat, txt_feat

    def forward(
        self, b: dict[str, Any], rng: np.random.Generator | None = None, negatives: Any = None
    ) -> tuple[dict[str, torch.Tensor], tuple[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]:
        """The three losses of one batch, the negatives used (the teacher reuses them) and the ITC
        features (detached)."""
        image, img_feat, txt_feat = self.features(b)
        sim = img_feat @ txt_feat.t() / ITC_TEMPERATURE  # [B images, B texts]
        if negatives is None:
            s, pos = sim.detach().double().cpu().numpy(), b["positive"].cpu().numpy()
            negatives = (sample_negatives(s, pos, rng), sample_negatives(s.T, pos.T, rng))
        losses = {
            "itc": itc_loss(sim, b["positive"]),
            "itm": self.itm_loss(image, b, *negatives),
            "lm": caption_loss(self.vqa, image, b),
        }
        return losses, negatives, (img_feat.detach(), txt_feat.detach())

    def itm_loss(self, image: torch.Tensor, b: dict[str, Any], neg_text: Any, neg_image: Any) -> torch.Tensor:
        """(image i, text i) match; (image i, text neg_text[i]) and (image neg_image[j], text j) do not."""
        n = image.shape[0]
        nt = torch.as_tensor(neg_text, device=image.device)
        ni = torch.as_tensor(neg_image, device=image.device)
        ids, mask = b["input_ids"], b["attention_mask"]
        out = self.vqa.text_encoder(
            input_ids=torch.cat([ids, ids[nt], ids]),
            attention_mask=torch.cat([mask, mask[nt], mask]),
            encoder_hidden_states=torch.cat([image, image, image[ni]]),
            encoder_attention_mask=torch.ones((3 * n, image.shape[1]), dtype=torch.long, device=image.device),
        ).last_hidden_state
        labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(image.device)
        return F.cross_entropy(self.itm_head(out[:, 0]).float(), labels)


def heads_state(module: DAPTModel) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().contiguous() for k, v in module.state_dict().items() if k.split(".")[0] in HEADS
    }


# ---------------------------------------------------------------------------------------------
# the dapt / dapt-sd recipes' task for the training loop (see loop.py for the interface)


class DAPTTask:
    drop_last = True  # ITC and ITM need two or more pairs in every batch

    def __init__(self, cfg: TrainConfig, loaded: models.Loaded, train: list, val: list, device: Any):
        if len(train) < 2 or len(val) < 2:
            raise InputError(
                "dapt needs at least 2 train and 2 val captions (ITC/ITM use in-batch negatives)"
            )
        self.cfg, self.loaded, self.device, self.tok = cfg, loaded, device, loaded.tokenizer
        self.module = DAPTModel(loaded.model).to(device)
        self.load_heads(cfg.init)
        self.max_len = max_caption_tokens(loaded.model, cfg)
        self.images = ImageCache(loaded.image)
        self.train = encode_captions(train, cfg.data, self.tok, self.max_len)
        self.val = encode_captions(val, cfg.data, self.tok, self.max_len)
        self.n_train = len(train)
        self.teacher, self.distiller = None, None
        if cfg.recipe == "dapt-sd":  # the EMA teacher starts as a copy of the student
            self.teacher = copy.deepcopy(self.module).requires_grad_(False).eval()
            self.distiller = distill.Distiller()

    def load_heads(self, init: str) -> None:
        path = Path(init) / HEADS_FILE if init else None
        if path is not None and path.is_file():
            from safetensors.torch import load_file

            self.module.load_state_dict(load_file(str(path)), strict=False)
            log.info("dapt heads continued from %s", path)

    def batch(self, data: Captions, idx: Any) -> dict[str, Any]:
        return to_device(make_caption_batch(data, idx, self.images, self.tok.pad_token_id), self.device)

    def loss(self, idx: Any, step: int, micro: int) -> tuple[torch.Tensor, dict[str, float]]:
        b = self.batch(self.train, idx)
        losses, negatives, _ = self.module(b, rng=np.random.default_rng([self.cfg.seed, step, micro]))
        total = losses["itc"] + losses["itm"] + losses["lm"]  # L_DAPT (Figure 1)
        parts = {k: v.item() for k, v in losses.items()}
        if self.teacher is not None:
            with torch.no_grad():
                t_losses, _, _ = self.teacher(b, negatives=negatives)
            teacher = {k: v.item() for k, v in t_losses.items()}
            w = self.distiller.update(parts, teacher)  # eqs. (2)-(4)
            d = distill.distill_loss(losses, teacher, w)  # eqs. (5)-(7)
            total = total + d  # eq. (8)
            parts.update(distill=d.item(), **{f"w_{k}": v for k, v in w.items()})
            parts.update({f"teacher_{k}": v for k, v in teacher.items()})
        return total, parts

    def after_step(self, step: int, total: int) -> None:
        if self.teacher is not None:  # eq. (1), once per optimizer step
            distill.ema_update(self.teacher, self.module, distill.teacher_momentum(step, total))

    def evaluate(self, data: Captions, limit: int = 0) -> dict[str, float]:
        """Mean ITC/ITM/LM losses over ``data`` and in-set retrieval recall@1 (image->text, text->image)."""
        n = min(max(limit, 2) if limit else len(data.records), len(data.records))  # ITC/ITM need 2
        bs = max(2, self.cfg.batch_size)
        chunks = [list(range(s, min(n, s + bs))) for s in range(0, n, bs)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks[-2] += chunks.pop()
        sums = dict.fromkeys(distill.TASKS, 0.0)
        feats: list[tuple[torch.Tensor, torch.Tensor]] = []
        was_training = self.module.training
        self.module.eval()
        with torch.inference_mode():
            for c, idx in enumerate(chunks):
                b = self.batch(data, idx)
                losses, _, f = self.module(b, rng=np.random.default_rng([self.cfg.seed, _VAL_STREAM, c]))
                for k, v in losses.items():
                    sums[k] += v.item() * len(idx)
                feats.append(f)
        self.module.train(was_training)
        out = {k: v / n for k, v in sums.items()}
        out["total"] = sum(out[k] for k in distill.TASKS)
        out.update(self.recall_at_1(data.subset(range(n)), feats))
        return out

    @staticmethod
    def recall_at_1(data: Captions, feats: list) -> dict[str, float]:
        img = torch.cat([f[0] for f in feats]).cpu()
        txt = torch.cat([f[1] for f in feats]).cpu()
        sim = img @ txt.t()
        texts = [tuple(t) for t in data.text_ids]
        pos = torch.tensor(
            [
                [p == q or a == b for q, b in zip(data.image_paths, texts)]
                for p, a in zip(data.image_paths, texts)
            ]
        )
        rows = torch.arange(len(texts))
        return {
            "i2t_recall@1": pos[rows, sim.argmax(1)].float().mean().item(),
            "t2i_recall@1": pos[sim.argmax(0), rows].float().mean().item(),
        }

    def validate(self, limit: int) -> tuple[float, dict[str, Any]]:
        ev = self.evaluate(self.val, limit)
        return -ev["total"], {"val_dapt": ev}

    def describe(self, score: float) -> str:
        return f"val dapt loss (itc + itm + lm) {-score:.4f}"

    def report(self) -> dict[str, Any]:
        out = {"val": {"n": len(self.val.records), **self.evaluate(self.val)}}
        if (recs := load_optional_captions(self.cfg.data, "test")) is not None:
            test = encode_captions(recs, self.cfg.data, self.tok, self.max_len)
            if len(test.records) >= 2:
                out["test"] = {"n": len(test.records), **self.evaluate(test)}
        if self.distiller is not None:
            out["distill"] = {"smoothed_ratios": self.distiller.state_dict()}
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        if self.teacher is None:
            return {}, {}
        # parameters only (named_parameters lists a tied weight once; safetensors refuses shared memory)
        tensors = {f"teacher.{k}": v.detach().cpu().contiguous() for k, v in self.teacher.named_parameters()}
        return {"smoothed_ratios": self.distiller.state_dict()}, tensors

    def load_state(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if self.teacher is None:
            return
        self.distiller.load_state_dict(state["smoothed_ratios"])
        weights = {k[len("teacher.") :]: v for k, v in tensors.items() if k.startswith("teacher.")}
        _, unexpected = self.teacher.load_state_dict(weights, strict=False)
        missing = {n for n, _ in self.teacher.named_parameters()} - set(weights)
        if unexpected or missing:
            raise RuntimeError(f"teacher checkpoint does not match: missing={sorted(missing)[:5]}")

    def finish(self, run: Path) -> None:
        """model/ (the student's VQA model), dapt_heads.safetensors, and teacher/ for dapt-sd."""
        from safetensors.torch import save

        with atomic.directory(run / "model", overwrite=True) as tmp:
            models.save_model_dir(self.loaded, tmp)
        atomic.write_bytes(run / HEADS_FILE, save(heads_state(self.module)))
        if self.teacher is not None:
            with atomic.directory(run / "teacher", overwrite=True) as tmp:
                teacher = models.Loaded(self.teacher.vqa, self.tok, self.loaded.image, self.loaded.source)
                models.save_model_dir(teacher, tmp)
