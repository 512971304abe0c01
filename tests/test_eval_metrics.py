"""Evaluation metrics against values computed by hand (the working is in the comments)."""

from __future__ import annotations

import math

import pytest

from edgevqa.data.records import VQARecord
from edgevqa.eval.caption_metrics import bleu, caption_tokens, cider_d, evaluate_captions, lcs_length, rouge_l
from edgevqa.eval.metrics import (
    differing_samples,
    edit_similarity,
    exact_match,
    levenshtein,
    match_key,
    normalize_answer,
    robustness,
    vqa_scores,
)

# ---------------------------------------------------------------------------------------------
# normalisation, exact match, edit similarity


def test_match_key_drops_punctuation_and_articles_but_keeps_words_whole():
    assert match_key("The left lung.") == "left lung"
    assert match_key("  X - Ray ") == "x-ray"  # normalize_answer's word-piece repair still applies
    assert match_key("An MRI (T2)!") == "mri t2"
    assert match_key("2.5 cm, 1,000") == "2.5 cm 1,000"  # decimal point / thousands comma stay
    assert match_key("Crohn's disease") == "crohn's disease"
    assert match_key("yes.") == match_key("Yes") == "yes"
    assert match_key("a") == ""
    # normalize_answer, which the dataset loaders store answers with, is unchanged
    assert normalize_answer("The left lung.") == "the left lung."
    assert exact_match("the liver", "Liver.") and not exact_match("left", "right")


def test_levenshtein_and_edit_similarity():
    assert levenshtein("kitten", "sitting") == 3  # k->s, e->i, +g
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("The lung.", "lungs") == pytest.approx(1 - 1 / 5)  # "lung" vs "lungs"
    assert edit_similarity("no", "yes") == 0.0  # 3 edits over 3 characters
    assert edit_similarity("", "") == 1.0 and edit_similarity("", "yes") == 0.0


def rec(answer: str, atype: str, cat: str, region: str = "") -> VQARecord:
    return VQARecord("x.png", "q?", answer, atype, cat, meta={"region": region} if region else {})


def test_vqa_scores_table1_and_groups():
    preds = ["yes", "no", "the CT.", "mri", "2"]
    records = [
        rec("yes", "closed", "presence", "chest"),
        rec("yes", "closed", "presence", "chest"),
        rec("ct", "open", "modality", "brain"),
        rec("mra", "open", "modality", "brain"),
        rec("2", "open", "count"),
    ]
    s = vqa_scores(preds, records)
    # exact match: 1 0 1 0 1
    assert s["accuracy"] == pytest.approx({"overall": 3 / 5, "closed": 1 / 2, "open": 2 / 3})
    # edit similarity: 1, 0 ("no"/"yes": 3 edits / 3), 1, 2/3 ("mri"/"mra": 1 edit / 3), 1
    assert s["edit_similarity"] == pytest.approx({"overall": 11 / 15, "closed": 1 / 2, "open": 8 / 9})
    assert s["counts"] == {"overall": 5, "closed": 2, "open": 3}
    assert s["by_category"]["open/modality"] == pytest.approx(
        {"n": 2, "accuracy": 0.5, "edit_similarity": 5 / 6}
    )
    assert list(s["by_category"]) == ["closed/presence", "open/count", "open/modality"]
    assert s["by_organ"]["chest"]["accuracy"] == 0.5 and s["by_organ"]["unknown"]["accuracy"] == 1.0
    assert "by_organ" not in vqa_scores(["yes"], [rec("yes", "closed", "presence")])


# ---------------------------------------------------------------------------------------------
# robustness (paper 003)


def test_differing_samples_counts_against_the_most_common_answer():
    assert differing_samples(["yes", "Yes.", "yes", "no", "yes"]) == 1
    assert differing_samples(["no", "yes", "maybe", "no", "yes"]) == 3  # mode has 2
    assert differing_samples(["ct", "mri", "x-ray", "ct", "the CT"]) == 2  # 3 distinct answers, still robust
    assert differing_samples(["a1", "b", "c", "d", "e"]) == 4


def test_robustness_takes_the_point_of_every_non_robust_question():
    samples = [
        ["yes", "yes", "yes", "no", "yes"],  # gold yes: correct 1 1 1 0 1, 1 differs: robust
        ["no", "yes", "maybe", "no", "yes"],  # gold no: correct 1 0 0 1 0, 3 differ: NON-robust
        ["CT", "mri", "x-ray", "ct.", "The CT"],  # gold ct: correct 1 0 0 1 1, 2 differ: robust
    ]
    r = robustness(samples, ["yes", "no", "ct"], ["closed", "closed", "open"])
    # overall, per run j: (3, 1, 1, 2, 2) / 3 -> mean 0.6; in thirds the deviations are
    # 1.2, -.8, -.8, .2, .2 -> variance 2.8 / 5 = .56 -> std sqrt(.56) / 3
    o = r["overall"]
    assert (o["n"], o["non_robust"]) == (3, 1) and o["non_robust_rate"] == pytest.approx(1 / 3)
    assert o["accuracy_mean"] == pytest.approx(0.6)
    assert o["accuracy_std"] == pytest.approx(math.sqrt(0.56) / 3)
    # penalised: the non-robust question scores 0 in every run -> (2, 1, 1, 1, 2) / 3, mean 7/15;
    # in thirds the deviations are .6, -.4, -.4, -.4, .6 -> variance 1.2 / 5 = .24
    assert o["penalised_mean"] == pytest.approx(7 / 15)
    assert o["penalised_std"] == pytest.approx(math.sqrt(0.24) / 3)
    # closed: runs (1, .5, .5, .5, .5) -> mean .6, std .2; penalised (.5, .5, .5, 0, .5) -> .4, .2
    c = r["closed"]
    assert (c["accuracy_mean"], c["accuracy_std"]) == pytest.approx((0.6, 0.2))
    assert (c["penalised_mean"], c["penalised_std"]) == pytest.approx((0.4, 0.2))
    # open: runs (1, 0, 0, 1, 1), no penalty
    assert r["open"]["penalised_mean"] == pytest.approx(0.6) and r["open"]["non_robust"] == 0
    with pytest.raises(ValueError):
        robustness([["a"] * 5, ["a"] * 4], ["a", "a"], ["closed", "closed"])


# ---------------------------------------------------------------------------------------------
# caption metrics


def test_caption_tokens():
    assert caption_tokens("Chest X-ray: a 2.5 cm nodule, left.") == [
        "chest",
        "x-ray",
        "a",
        "2.5",
        "cm",
        "nodule",
        "left",
    ]


CAT = "the cat sat on the mat"


def test_bleu_single_caption():
    # 1-grams: the x2, cat, on, mat match, sat not: 5/6. 2-grams: "the cat", "on the", "the mat" of
    # 5: 3/5. 3-grams: "on the mat" of 4: 1/4. 4-grams: none of 3. Lengths 6 = 6: BP 1.
    b = bleu([CAT.split()], [["the cat is on the mat".split()]])
    assert b[0] == pytest.approx(5 / 6)
    assert b[1] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
    assert b[2] == pytest.approx(0.5)  # (5/6 * 3/5 * 1/4) ** (1/3) = (1/8) ** (1/3)
    assert b[3] == 0.0  # no smoothing


def test_bleu_brevity_penalty_clipping_and_corpus_level():
    # c = 2 < r = 4: BP = exp(1 - 4/2); precisions 1
    assert bleu([["the", "cat"]], [[["the", "cat", "is", "here"]]])[:2] == pytest.approx([math.exp(-1)] * 2)
    # "the" x3 clipped at its largest count in one reference (2); closest reference length 3 = c
    assert bleu([["the"] * 3], [[["the", "cat"], ["the", "the", "dog"]]])[0] == pytest.approx(2 / 3)
    # corpus: p1 = (5 + 2) / (6 + 2), c = 8, r = 6 + 4, BP = exp(1 - 10/8); not a mean of sentences
    r = evaluate_captions([CAT, "the cat"], ["the cat is on the mat", "the cat is here"])
    assert r["bleu_1"] == pytest.approx(math.exp(-0.25) * 7 / 8)


def test_rouge_l_beta_1_2():
    assert lcs_length(CAT.split(), "the cat on mat".split()) == 4
    # P = 4/6, R = 4/4, F = (1 + 1.44) P R / (R + 1.44 P) = (2.44 * 2/3) / 1.96 = 4.88 / 5.88
    assert rouge_l(CAT.split(), ["the cat on mat".split()]) == pytest.approx(4.88 / 5.88)
    # best precision (3/3) and best recall (2/2) taken over the references separately
    assert rouge_l("a b c".split(), ["a b".split(), "a b c d e f".split()]) == pytest.approx(1.0)
    assert rouge_l([], [["a"]]) == 0.0


def test_cider_d_by_hand():
    # Two images, N = 2, references "a b" and "a d". df: a 2; b, d, "a b", "a d" 1; unseen 0.
    # idf = log N - log max(1, df): a 0, everything else log 2 (= L).
    # Image 1, "a b b" vs "a b": 1-grams cand {a: 0, b: 2L}, ref {a: 0, b: L}; clipped dot
    #   min(2L, L) * L = L^2 over norms 2L * L -> 1/2 (unclipped it would be 1).
    #   2-grams cand {ab: L, bb: L}, ref {ab: L}: L^2 / (sqrt(2) L * L) = 1/sqrt(2). 3-, 4-grams: 0.
    #   Length penalty exp(-(3 - 2)^2 / (2 * 36)). Score 10 * mean over n = 10 * (1/2 + 1/sqrt 2) / 4 * pen.
    # Image 2, "a c" vs "a d": only "a" is shared and its weight is 0 -> 0.
    one = 10 * (0.5 + 2**-0.5) / 4 * math.exp(-1 / 72)
    assert cider_d([["a", "b", "b"], ["a", "c"]], [[["a", "b"]], [["a", "d"]]]) == pytest.approx([one, 0.0])
    assert evaluate_captions(["a b b", "a c"], ["a b", "a d"])["cider"] == pytest.approx(one / 2)
    # identical captions score 10 * (2 of 4 n-gram orders present) / 4 = 5 here
    assert cider_d([["a", "b"], ["a", "d"]], [[["a", "b"]], [["a", "d"]]]) == pytest.approx([5.0, 5.0])
    # one image: log N = 0, every weight 0 (idf comes from the evaluated corpus)
    assert evaluate_captions(["a b"], ["a b"])["cider"] == 0.0


def test_evaluate_captions_shape_and_errors():
    r = evaluate_captions(["the cat"], [["the cat", "a cat"]])
    assert set(r) == {"n", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}
    with pytest.raises(ValueError):
        evaluate_captions(["a"], [])
    with pytest.raises(ValueError):
        evaluate_captions(["a"], [[]])
