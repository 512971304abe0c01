"""Several questions about one image: the encoding is cached by content; rank mode scores
candidates like PyTorch does."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevqa.errors import InputError
from edgevqa.runtime import VQAPipeline
from edgevqa.runtime.pipeline import sequence_log_probs


@pytest.fixture(scope="module")
def pipe(bundle):
    return VQAPipeline.from_bundle(bundle, precision="fp32", image_cache=2)


def test_follow_up_questions_reuse_the_image_encoding(pipe, synth_data, tmp_path):
    from edgevqa.data.records import load_split

    rec = load_split(synth_data, "test")[0]
    path = rec.image_path(synth_data)
    qs = ["is there a lesion?", "what modality is this?", "how many lesions are there?"]
    pipe.forget_images()
    many = pipe.ask_many(path, qs)
    assert [a.image_cached for a in many] == [False, True, True]
    assert many[1].timings_ms["preprocess_ms"] == 0.0
    fresh = VQAPipeline.from_bundle(pipe.bundle, precision="fp32", image_cache=0)
    assert [a.token_ids for a in many] == [fresh.ask(path, q).token_ids for q in qs]
    # the same picture in another file format hits the cache: the key is the pixels, not the bytes
    Image.open(path).save(tmp_path / "same.bmp")
    assert pipe.ask(tmp_path / "same.bmp", qs[0]).image_cached


def test_image_cache_is_bounded(pipe, tmp_path):
    pipe.forget_images()
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.new("L", (32, 32), 40 * i).save(p)
        paths.append(p)
        pipe.ask(p, "is there a lesion?")
    assert len(pipe._encodings) == 2  # image_cache=2: the oldest was dropped
    assert not pipe.ask(paths[0], "is there a lesion?").image_cached
    assert pipe.ask(paths[0], "is there a lesion?").image_cached


def test_a_repeated_file_is_not_decoded_again_and_a_changed_one_is(pipe, tmp_path, monkeypatch):
    """The same bytes again: the cached encoding comes back without decoding or preprocessing.
    New bytes under the same path (a rewritten file) are decoded: the key is the content."""
    from edgevqa.runtime import pipeline as pl

    pipe.forget_images()
    path = tmp_path / "x.png"
    Image.new("L", (32, 32), 10).save(path)
    first = pipe.ask(path, "is there a lesion?")
    decoded = []
    real = pl.load_image
    monkeypatch.setattr(pl, "load_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    again = pipe.ask(path, "is there a lesion?")
    assert again.image_cached and decoded == [] and again.token_ids == first.token_ids
    assert pipe.ask(path.read_bytes(), "is there a lesion?").image_cached and decoded == []
    Image.new("L", (32, 32), 200).save(path)  # same name, other pixels
    assert not pipe.ask(path, "is there a lesion?").image_cached and decoded == [1]


def test_sequence_log_probs_by_hand():
    probs = np.array([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]], [[0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]])
    targets = np.array([[0, 1], [2, 0]])
    got = sequence_log_probs(np.log(probs).astype(np.float32), targets, [2, 1])  # row 2: one real token
    np.testing.assert_allclose(got, [np.log(0.5) + np.log(0.8), np.log(0.6)], rtol=1e-6)


def test_rank_matches_pytorch_scores(pipe, lora_run, synth_data):
    import torch

    from edgevqa.data.records import load_split
    from edgevqa.export.merge import load_run
    from edgevqa.runtime.images import load_image
    from edgevqa.runtime.preprocess import preprocess

    merged = load_run(lora_run).loaded
    model, tok = merged.model, merged.tokenizer
    rec = next(r for r in load_split(synth_data, "test") if r.answer_type == "closed")
    path = rec.image_path(synth_data)
    cands = ("yes", "no", "x-ray")  # candidates of different token lengths
    ranked = pipe.rank(path, rec.question, cands)
    pixels = torch.from_numpy(preprocess(load_image(path), merged.image))
    q = tok(rec.question, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        img = model.vision_model(pixel_values=pixels).last_hidden_state
        qe = model.text_encoder(input_ids=q, attention_mask=torch.ones_like(q), encoder_hidden_states=img)[0]
        for c in cands:
            ids = [tok.bos_token_id, *tok(c)["input_ids"][1:]]
            logits = model.text_decoder(input_ids=torch.tensor([ids[:-1]]), encoder_hidden_states=qe).logits
            ref = torch.log_softmax(logits[0].double(), -1)[torch.arange(len(ids) - 1), ids[1:]].sum().item()
            assert ranked.scores[c] == pytest.approx(ref, abs=1e-4)
    assert ranked.text == max(ranked.scores, key=ranked.scores.get)


def test_rank_needs_two_candidates(pipe, synth_data):
    with pytest.raises(InputError, match="two candidate"):
        pipe.rank(next((synth_data / "images").iterdir()), "is there a lesion?", ("yes",))
