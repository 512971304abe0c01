"""Caption metrics: BLEU-1..4, ROUGE-L and CIDEr-D. Pure functions, no dependencies.

They follow the definitions of the COCO caption evaluation (Chen et al. 2015, the code behind
pycocoevalcap), written out here instead of imported (it pulls Java for its tokenizer):

* BLEU-n (Papineni et al. 2002): corpus level. Modified (clipped) n-gram precisions p_1..p_n summed
  over the corpus, their geometric mean, times the brevity penalty exp(1 - r/c) when the candidate
  length c is below the effective reference length r (per caption, the reference length closest
  to the candidate's, the shorter on ties). No smoothing: a p_k of 0 gives BLEU-n = 0 for n >= k.
* ROUGE-L (Lin 2004): per caption, the longest common subsequence with each reference; precision
  and recall are the best over the references, F = (1 + b^2) P R / (R + b^2 P) with b = 1.2 (as
  in the COCO evaluation), averaged over captions.
* CIDEr-D (Vedantam et al. 2015): n-grams n = 1..4 weighted by tf-idf, idf = log(N / df) with N the
  number of evaluated images and df the number of images whose references contain the n-gram.
  Per n, the candidate-reference cosine with the candidate's weights clipped at the reference's,
  times a Gaussian length penalty exp(-(l_c - l_r)^2 / (2 * 6^2)); averaged over n and references,
  times 10. The idf comes from the evaluated corpus itself (as the COCO code does), so a score is
  comparable only across models evaluated on the same references; one image alone scores 0.

Text is lower-cased and split into words (``caption_tokens``); punctuation is dropped except
inside words ("x-ray", "t2-weighted", "2.5").

Example:
    >>> evaluate_captions(["a chest x-ray"], [["chest x-ray of a patient"]])["bleu_1"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+(?:[-'./]\w+)*")
ROUGE_BETA = 1.2
CIDER_SIGMA = 6.0
CIDER_N = 4

Ngram = tuple[str, ...]


def caption_tokens(text: str) -> list[str]:
    """Lower-cased words; punctuation dropped except inside words."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _as_refs(refs: str | Sequence[str]) -> list[str]:
    out = [refs] if isinstance(refs, str) else list(refs)
    if not out:
        raise ValueError("every caption needs at least one reference")
    return out


# ---------------------------------------------------------------------------------------------
# BLEU


def bleu(
    candidates: Sequence[list[str]], references: Sequence[list[list[str]]], max_n: int = 4
) -> list[float]:
    """Corpus BLEU-1..``max_n`` of tokenized candidates, each with one or more tokenized references."""
    matched, total = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for cand, refs in zip(candidates, references):
        c_len += len(cand)
        r_len += min((abs(len(r) - len(cand)), len(r)) for r in refs)[1]  # closest, shorter on ties
        for n in range(1, max_n + 1):
            counts = ngrams(cand, n)
            best: Counter[Ngram] = Counter()
            for r in refs:
                best |= ngrams(r, n)  # per n-gram, its largest count in any one reference
            matched[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += max(len(cand) - n + 1, 0)
    if c_len == 0:
        return [0.0] * max_n
    bp = 1.0 if c_len > r_len else math.exp(1 - r_len / c_len)
    out, log_sum = [], 0.0
    for n in range(max_n):
        if matched[n] == 0:
            out.extend([0.0] * (max_n - n))
            break
        log_sum += math.log(matched[n] / total[n])
        out.append(bp * math.exp(log_sum / (n + 1)))
    return out


# ---------------------------------------------------------------------------------------------
# ROUGE-L


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: list[str], refs: list[list[str]], beta: float = ROUGE_BETA) -> float:
    """ROUGE-L F-measure of one caption: best precision and best recall over the references."""
    if not candidate:
        return 0.0
    lcs = [lcs_length(candidate, r) for r in refs]
    prec = max(m / len(candidate) for m in lcs)
    rec = max(m / len(r) if r else 0.0 for m, r in zip(lcs, refs))
    if prec == 0 or rec == 0:
        return 0.0
    return (1 + beta**2) * prec * rec / (rec + beta**2 * prec)


# ---------------------------------------------------------------------------------------------
# CIDEr-D


def _tfidf(
    tokens: list[str], df: Counter[Ngram], log_n: float
) -> tuple[list[dict[Ngram, float]], list[float]]:
    """Per n: the tf-idf vector of one caption and its norm."""
    vecs, norms = [], []
    for n in range(1, CIDER_N + 1):
        v = {g: tf * (log_n - math.log(max(1.0, df[g]))) for g, tf in ngrams(tokens, n).items()}
        vecs.append(v)
        norms.append(math.sqrt(sum(x * x for x in v.values())))
    return vecs, norms


def _cider_pair(cand: list[str], ref: list[str], df: Counter[Ngram], log_n: float) -> float:
    """Mean over n of the clipped tf-idf cosine of a candidate and one reference, length-penalised."""
    (vc, nc), (vr, nr) = _tfidf(cand, df, log_n), _tfidf(ref, df, log_n)
    penalty = math.exp(-((len(cand) - len(ref)) ** 2) / (2 * CIDER_SIGMA**2))
    total = 0.0
    for n in range(CIDER_N):
        val = sum(min(x, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, x in vc[n].items())
        if nc[n] and nr[n]:
            val /= nc[n] * nr[n]
        total += val * penalty
    return total / CIDER_N


def cider_d(candidates: Sequence[list[str]], references: Sequence[list[list[str]]]) -> list[float]:
    """CIDEr-D of each tokenized caption; idf from the references of all of them (see module doc)."""
    df: Counter[Ngram] = Counter()
    for refs in references:
        df.update({g for r in refs for n in range(1, CIDER_N + 1) for g in ngrams(r, n)})
    log_n = math.log(len(references)) if references else 0.0
    return [
        10.0 * sum(_cider_pair(c, r, df, log_n) for r in refs) / len(refs)
        for c, refs in zip(candidates, references)
    ]


# ---------------------------------------------------------------------------------------------


def evaluate_captions(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4 (corpus), ROUGE-L and CIDEr-D (means over captions) of ``predictions``.

    Args:
        predictions: one generated caption per image.
        references: per image, its reference caption or a list of them.

    Returns:
        ``{"n", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"}``.
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references must have the same length")
    cands = [caption_tokens(p) for p in predictions]
    refs = [[caption_tokens(r) for r in _as_refs(rs)] for rs in references]
    n = len(cands)
    out: dict[str, float] = {"n": n}
    out.update({f"bleu_{i + 1}": b for i, b in enumerate(bleu(cands, refs))})
    out["rouge_l"] = sum(rouge_l(c, r) for c, r in zip(cands, refs)) / max(n, 1)
    out["cider"] = sum(cider_d(cands, refs)) / max(n, 1)
    return out
