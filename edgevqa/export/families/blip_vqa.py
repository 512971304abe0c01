"""BLIP VQA on the export side: wrappers that make its three components traceable with plain
tensors, their dummy and real inputs, and the manifest's text and decoder settings.

The graphs these produce are the bundle's contract (see edgevqa/families/blip_vqa.py):

* VisionEncoder:   pixel_values [B,3,H,W] -> image_key, image_value [L,B,H,N,d]: the ViT's
                   embeddings already projected into the question encoder's cross-attention
                   keys/values, so everything that depends on the image alone runs once per image
* QuestionEncoder: input_ids, attention_mask [B,Q], image_key, image_value -> cross_key,
                   cross_value [L,B,H,Q,d]: the decoder's cross-attention keys/values, once per answer
* DecoderStep:     input_ids [B,T], past_key/past_value [L,B,H,P,d], cross_key/cross_value
                   -> logits [B,T,V], present_key/present_value [L,B,H,P+T,d]

The text graphs are written out over the HF modules' own Linear/LayerNorm weights instead of
tracing transformers' Cache objects: the KV cache becomes two stacked tensors the runtime can
pass back in, nothing re-runs the answer prefix, and a follow-up question about the same image
costs only the question encoder and the decoder (on blip-vqa-base, projecting the 577 image
tokens anew for every question was ~30 ms of int8 per question). Like ``generate()``, the
decoder attends to every question position (no question mask in cross-attention;
shared/notes pitfall 5); the image side has no padding, so no mask there either.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from edgevqa import bundle
from edgevqa.train.base import Loaded
from edgevqa.train.data import Encoded, ImageCache


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)  # [B,H,T,d]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # the same op order as BlipTextSelfAttention (eager): (q k^T) / sqrt(d) + mask, softmax, @ v
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, t, d = ctx.shape
    return ctx.transpose(1, 2).reshape(b, t, h * d)


def _project(layers: nn.ModuleList, x: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's cross-attention keys and values of ``x``, stacked: [L,B,H,T,d] each."""
    keys = [_heads(layer.crossattention.self.key(x), n_heads) for layer in layers]
    values = [_heads(layer.crossattention.self.value(x), n_heads) for layer in layers]
    return torch.stack(keys), torch.stack(values)


class VisionEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision = model.vision_model
        self.layers = model.text_encoder.encoder.layer
        self.n_heads = model.config.text_config.num_attention_heads

    def forward(self, pixel_values: torch.Tensor):
        embeds = self.vision(pixel_values=pixel_values).last_hidden_state
        return _project(self.layers, embeds, self.n_heads)


class QuestionEncoder(nn.Module):
    """BlipTextModel's encoder pass (as generate() runs it), the image's keys/values given."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.emb = model.text_encoder.embeddings
        self.layers = model.text_encoder.encoder.layer
        self.decoder_layers = model.text_decoder.bert.encoder.layer
        self.n_heads = model.config.text_config.num_attention_heads

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_key: torch.Tensor,
        image_value: torch.Tensor,
    ):
        x = self.emb(input_ids=input_ids)
        # padding masked as BlipTextModel does it: (1 - mask) * finfo.min added to the scores
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        n = self.n_heads
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            ctx = _attend(_heads(sa.query(x), n), _heads(sa.key(x), n), _heads(sa.value(x), n), bias)
            x = layer.attention.output(ctx, x)
            ctx = _attend(_heads(layer.crossattention.self.query(x), n), image_key[i], image_value[i], None)
            x = layer.crossattention.output(ctx, x)
            x = layer.output(layer.intermediate(x), x)
        return _project(self.decoder_layers, x, n)


class DecoderStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        bert = model.text_decoder.bert
        self.emb = bert.embeddings
        self.layers = bert.encoder.layer
        head = model.text_decoder.cls.predictions
        self.transform = head.transform
        # the output projection shares its weight with the word embeddings; tied, the exporter
        # feeds the MatMul through a Transpose, the int8 quantizer skips it and every step streams
        # it in fp32 (~2 ms per step at full size). A transposed copy is a plain constant weight.
        self.lm_weight = nn.Parameter(head.decoder.weight.detach().t().contiguous(), requires_grad=False)
        self.lm_bias = head.decoder.bias
        self.n_heads = model.config.text_config.num_attention_heads

    def causal_bias(self, t: int, past: int, dtype: torch.dtype) -> torch.Tensor:
        # new token i (absolute position past+i) sees keys 0..past+i; finfo.min as transformers does
        q_pos = torch.arange(t).unsqueeze(1) + past
        k_pos = torch.arange(past + t).unsqueeze(0)
        zero = torch.zeros((), dtype=dtype)
        return torch.where(k_pos <= q_pos, zero, torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key: torch.Tensor | None,
        past_value: torch.Tensor | None,
        cross_key: torch.Tensor,
        cross_value: torch.Tensor,
    ):
        past, t = (0 if past_key is None else past_key.shape[3]), input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device).unsqueeze(0) + past
        x = self.emb.LayerNorm(self.emb.word_embeddings(input_ids) + self.emb.position_embeddings(positions))
        bias = self.causal_bias(t, past, x.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            k, v = _heads(sa.key(x), self.n_heads), _heads(sa.value(x), self.n_heads)
            if past_key is not None:
                k, v = torch.cat([past_key[i], k], dim=2), torch.cat([past_value[i], v], dim=2)
            keys.append(k)
            values.append(v)
            ctx = _attend(_heads(sa.query(x), self.n_heads), k, v, bias)
            x = layer.attention.output(ctx, x)
            ca = layer.crossattention.self
            ctx = _attend(_heads(ca.query(x), self.n_heads), cross_key[i], cross_value[i], None)
            x = layer.crossattention.output(ctx, x)
            x = layer.output(layer.intermediate(x), x)
        logits = torch.matmul(self.transform(x), self.lm_weight) + self.lm_bias
        return logits, torch.stack(keys), torch.stack(values)


class DecoderFirst(DecoderStep):
    """The first answer step, with no cache in (TensorRT bundles; see edgevqa/families/blip_vqa.py)."""

    def forward(self, input_ids: torch.Tensor, cross_key: torch.Tensor, cross_value: torch.Tensor):
        return super().forward(input_ids, None, None, cross_key, cross_value)


WRAPPERS = {
    "vision_encoder": VisionEncoder,
    "question_encoder": QuestionEncoder,
    "decoder_step": DecoderStep,
    "decoder_first": DecoderFirst,
}


def dummy_inputs(
    model: Any, graph: str, batch: int = 2, question: int = 7, past: int = 3, new: int = 1
) -> dict[str, torch.Tensor]:
    """Inputs of the right dtypes and shapes; sizes differ per axis so no axis is confused."""
    vc, tc = model.config.vision_config, model.config.text_config
    n_img = (vc.image_size // vc.patch_size) ** 2 + 1
    heads, layers = tc.num_attention_heads, tc.num_hidden_layers
    d = tc.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    cross = torch.randn(layers, batch, heads, question, d, generator=g)
    image = torch.randn(layers, batch, heads, n_img, d, generator=g)
    ids = torch.randint(5, tc.vocab_size, (batch, question), generator=g)
    return {
        "vision_encoder": lambda: {
            "pixel_values": torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
        },
        "question_encoder": lambda: {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "image_key": image,
            "image_value": image.flip(-1).contiguous(),
        },
        "decoder_step": lambda: {
            "input_ids": ids[:, :new],
            "past_key": torch.randn(layers, batch, heads, past, d, generator=g),
            "past_value": torch.randn(layers, batch, heads, past, d, generator=g),
            "cross_key": cross,
            "cross_value": cross.flip(-1).contiguous(),
        },
        "decoder_first": lambda: {
            "input_ids": ids[:, :new],
            "cross_key": cross,
            "cross_value": cross.flip(-1).contiguous(),
        },
    }[graph]()


def graph_inputs(loaded: Loaded, enc: Encoded, images: ImageCache, n: int) -> dict[str, list[dict]]:
    """Real inputs for each graph, from the first ``n`` validation questions (batch 1 each)."""
    model, bos = loaded.model, loaded.tokenizer.bos_token_id
    feeds: dict[str, list[dict]] = {g: [] for g in WRAPPERS}
    vis, qen, dec = VisionEncoder(model).eval(), QuestionEncoder(model).eval(), DecoderStep(model).eval()
    with torch.inference_mode():
        for i in range(min(n, len(enc.records))):
            px = torch.from_numpy(images.get(enc.image_paths[i]))[None]
            ids = torch.tensor([enc.question_ids[i]])
            ik, iv = vis(px)
            ck, cv = qen(ids, torch.ones_like(ids), ik, iv)
            first = torch.tensor([[bos]])
            empty = ck.new_zeros((*ck.shape[:3], 0, ck.shape[4]))
            _, pk, pv = dec(first, empty, empty, ck, cv)
            nxt = torch.tensor([enc.answer_ids[i][1:3] or [bos]])  # two teacher-forced tokens, past = 1
            feeds["vision_encoder"].append({"pixel_values": px})
            feeds["question_encoder"].append(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_key": ik, "image_value": iv}
            )
            feeds["decoder_step"].append(
                {"input_ids": nxt, "past_key": pk, "past_value": pv, "cross_key": ck, "cross_value": cv}
            )
            feeds["decoder_first"].append({"input_ids": first, "cross_key": ck, "cross_value": cv})
    return feeds


def manifest_parts(
    loaded: Loaded, max_question_tokens: int, max_answer_tokens: int
) -> tuple[bundle.TextSpec, bundle.DecoderSpec, dict[str, Any]]:
    """The manifest's token ids and lengths, KV-cache shape and family settings (none for BLIP)."""
    tok, tc = loaded.tokenizer, loaded.model.config.text_config
    text = bundle.TextSpec(
        bos_id=tok.bos_token_id,
        sep_id=tok.sep_token_id,
        pad_id=tok.pad_token_id,
        max_question_tokens=max_question_tokens,
        max_answer_tokens=max_answer_tokens,
        clean_up_tokenization_spaces=bool(getattr(tok, "clean_up_tokenization_spaces", True)),
        eos_ids=(tok.sep_token_id,),
    )
    decoder = bundle.DecoderSpec(
        num_layers=tc.num_hidden_layers,
        num_heads=tc.num_attention_heads,
        head_dim=tc.hidden_size // tc.num_attention_heads,
        vocab_size=tc.vocab_size,
    )
    return text, decoder, {}


def floor_uses(config: Any, question_tokens: int, answer_tokens: int) -> list[Any]:
    """How one answer uses the graphs (bench/floor.py): the vision encoder sees the patches and the
    class token, the question encoder the question, the decoder step one new token per call."""
    from edgevqa.bench import floor

    v = config.vision_config
    return [
        floor.Use("vision_encoder", (v.image_size // v.patch_size) ** 2 + 1, 1),
        floor.Use("question_encoder", question_tokens, 1),
        floor.Use("decoder_step", 1, answer_tokens),
    ]
