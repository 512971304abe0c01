"""QuestionTokenizer: torch-free behaviour, and exact parity with transformers' BertTokenizerFast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from edgevqa.errors import BundleError, InputError
from edgevqa.runtime.tokenizer import QuestionTokenizer
from edgevqa.train.tokenizer import SPECIAL_TOKENS, base_vocab, build_wordpiece_tokenizer

WORDS = ["is", "there", "a", "lesion", "x", "ray", "what", "modality", "this"]
LONG = " ".join(["is there a lesion in this x-ray or what"] * 30) + "?"
QUESTIONS = [
    "Is there a lesion?",
    "IS THERE A LESION IN THIS X-RAY???",
    "what   modality is\tthis ?",
    "  What's the modality of this X-ray, doc?  ",
    "Is the pneumothorax left-sided (right?)",
    "Is there a lésion near T12?",
    "isn't it a lesion; it's 3.5cm!",
    "is\nthere\x00 a lesion 肺 🙂",
    "x" * 150,  # longer than WordPiece's max_input_chars_per_word
    LONG,
]
MAX_LENGTHS = [3, 4, 8, 17, 32, 512]


def _plain_tokenizer_json(path: Path, padded: bool = False) -> Path:
    """What build_wordpiece_tokenizer writes, built with `tokenizers` alone (so no transformers needed)."""
    vocab = base_vocab() + ["is", "there", "lesion", "ray"]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    if padded:  # a file saved with these on must not change what encode() returns
        tok.enable_padding(length=64)
        tok.enable_truncation(max_length=5)
    tok.save(str(path))
    return path


@pytest.fixture
def plain(tmp_path: Path) -> QuestionTokenizer:
    return QuestionTokenizer(_plain_tokenizer_json(tmp_path / "tokenizer.json"))


# ---------------------------------------------------------------- torch-free behaviour


def test_encode(plain: QuestionTokenizer):
    ids = plain.encode("Is THERE a  lesion?", max_tokens=32)
    assert ids.dtype == np.int64 and ids.ndim == 1
    assert plain.decode(ids) == "is there a lesion?"
    assert ids[0] == plain.token_id("[CLS]") == 2 and ids[-1] == plain.token_id("[SEP]") == 3


def test_truncation_keeps_sep(plain: QuestionTokenizer):
    full = plain.encode("is there a lesion", max_tokens=64)
    cut = plain.encode("is there a lesion", max_tokens=4)
    assert cut.tolist() == [*full[:3].tolist(), 3]


def test_wraps_a_tokenizer_object(tmp_path: Path, plain: QuestionTokenizer):
    wrapped = QuestionTokenizer(Tokenizer.from_file(str(_plain_tokenizer_json(tmp_path / "t.json"))))
    assert wrapped.encode("is there", 8).tolist() == plain.encode("is there", 8).tolist()


def test_saved_padding_and_truncation_are_ignored(tmp_path: Path, plain: QuestionTokenizer):
    padded = QuestionTokenizer(_plain_tokenizer_json(tmp_path / "p.json", padded=True))
    for q in QUESTIONS:
        np.testing.assert_array_equal(padded.encode(q, 40), plain.encode(q, 40))


@pytest.mark.parametrize("question", ["", "   ", "\t\n"])
def test_empty_question(plain: QuestionTokenizer, question: str):
    with pytest.raises(InputError, match="^the question is empty$"):
        plain.encode(question, 32)


def test_unreadable_question(plain: QuestionTokenizer):
    with pytest.raises(InputError, match="has no text the tokenizer can read"):
        plain.encode("\x00\x01", 32)


def test_max_tokens_too_small(plain: QuestionTokenizer):
    with pytest.raises(ValueError, match="max_tokens must be > 2"):
        plain.encode("is there", 2)


def test_decode_skips_specials_and_cleans_up(plain: QuestionTokenizer):
    t = plain.token_id
    ids = [t("[DEC]"), t("is"), t("i"), t("##t"), t("'"), t("s"), t("."), t("[SEP]"), t("[PAD]"), t("[PAD]")]
    assert plain.decode(ids) == "is it's."
    assert (
        plain.decode(np.array(ids), clean_up_tokenization_spaces=False) == "is it ' s."
    )  # Rust already did " ."
    assert plain.decode([]) == ""


def test_token_id_and_errors(tmp_path: Path, plain: QuestionTokenizer):
    assert [plain.token_id(s) for s in SPECIAL_TOKENS] == list(range(7))
    assert plain.vocab_size == len(base_vocab()) + 4
    with pytest.raises(BundleError, match="no token '\\[BOS\\]'"):
        plain.token_id("[BOS]")
    with pytest.raises(BundleError, match="tokenizer file not found"):
        QuestionTokenizer(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(BundleError, match="is not a valid tokenizer.json"):
        QuestionTokenizer(tmp_path / "bad.json")


# ---------------------------------------------------------------- parity with transformers


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("tok")
    hf = build_wordpiece_tokenizer(WORDS, out)
    return hf, QuestionTokenizer(out / "tokenizer.json"), out


def test_build_layout(built):
    hf, ours, out = built
    assert {p.name for p in out.iterdir()} >= {"vocab.txt", "tokenizer.json", "tokenizer_config.json"}
    vocab = (out / "vocab.txt").read_text("utf-8").splitlines()
    assert vocab[:7] == list(SPECIAL_TOKENS) and len(vocab) == len(set(vocab)) == hf.vocab_size
    assert hf.pad_token_id == 0 and hf.bos_token_id == ours.token_id("[DEC]") == 5
    assert hf.convert_tokens_to_ids("[ENC]") == 6 and "[ENC]" in hf.all_special_tokens
    assert {"##a", "##9", "-", "lesion", "modality"} <= set(vocab) and "##-" not in vocab
    assert vocab.index("is") > vocab.index("##z")  # the words come after the characters, sorted
    assert json.loads((out / "tokenizer_config.json").read_text())["clean_up_tokenization_spaces"] is True


def test_build_is_deterministic(built, tmp_path: Path):
    build_wordpiece_tokenizer(reversed(WORDS + ["Lesion", "X-Ray"]), tmp_path)
    assert (tmp_path / "vocab.txt").read_text() == (built[2] / "vocab.txt").read_text()


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
@pytest.mark.parametrize("question", QUESTIONS, ids=range(len(QUESTIONS)))
def test_encode_matches_hf(built, question: str, max_length: int):
    hf, ours, _ = built
    expect = hf(question, truncation=True, max_length=max_length).input_ids
    assert ours.encode(question, max_length).tolist() == expect


def _id_sequences(hf) -> list[list[int]]:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, hf.vocab_size, rng.integers(0, 30)).tolist() for _ in range(300)]
    named = [
        "[DEC] [CLS] lesion [SEP] [PAD] [PAD]",
        "[DEC] ##a ##b lesion [SEP] ray [PAD]",  # "##" pieces first, then a word after [SEP]
        "x - ray ##s [DEC] [ENC] [MASK] [UNK] [SEP]",
        "[SEP] [SEP] [PAD]",
        "[DEC] it ' s a lesion , isn ' t it ? yes .",
        "what ' re ' ve ' m n ' t",
    ]
    return seqs + [hf.convert_tokens_to_ids(s.split()) for s in named]


@pytest.mark.parametrize("clean_up", [None, True, False])
def test_decode_matches_hf(built, clean_up: bool | None):
    hf, ours, _ = built
    for ids in _id_sequences(hf):
        if clean_up is None:  # the tokenizer's own setting, which build_wordpiece_tokenizer makes True
            assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True), ids
        else:
            expect = hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up)
            assert ours.decode(ids, clean_up_tokenization_spaces=clean_up) == expect, ids


def test_decode_round_trip_matches_hf(built):
    hf, ours, _ = built
    for q in QUESTIONS:
        ids = ours.encode(q, 64)
        assert ours.decode(ids) == hf.decode(ids.tolist(), skip_special_tokens=True)
