"""Radiology terms in free text: modality, body region, side and findings (pure regex functions).

Used to filter ROCOv2 captions (primary modality) and to derive questions from them
(:mod:`edgevqa.data.qa_from_captions`). The rules are deliberately conservative: a term that is
ambiguous in a caption (two regions, both sides) yields nothing rather than a wrong answer.

Example:
    >>> primary_modality("Axial CT of the chest showing a left pleural effusion.")
    'ct'
    >>> regions("Axial CT of the chest showing a left pleural effusion."), side("... left pleural effusion")
    (['chest'], 'left')
    >>> findings("No pneumothorax. Small left pleural effusion.")
    {'effusion': True, 'pneumothorax': False}
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------- modality
# The modality of a caption is the one mentioned *first* ("primary"): "CT and MRI ..." is a CT,
# "Ultrasound, then CT ..." an ultrasound. Other modalities are listed only so that they can win
# that race and keep such captions out. Abbreviations that are also English words or titles
# (US, MR, PET) only count in upper case: (?-i:...) turns IGNORECASE off for them.
_MODALITY_RES: dict[str, re.Pattern[str]] = {
    name: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)
    for name, pattern in {
        "ct": r"CT|CTA|HRCT|MDCT|CECT|NCCT|computed tomograph\w*|computerized tomograph\w*|CAT scan",
        "mri": r"MRI|(?-i:MR|MRA|fMRI)|magnetic resonance|T[12][- ]?weighted|T[12]W|FLAIR|DWI"
        r"|diffusion[- ]weighted",
        "x-ray": r"x[- ]?rays?|radiograph\w*|roentgenogra\w*|CXR|plain films?|chest films?",
        "ultrasound": r"ultraso\w*|sonogra\w*|echocardiogra\w*|doppler|(?-i:US)",
        "nuclear": r"(?-i:PET|SPECT)|scintigra\w*|bone scan",
        "angiography": r"angiogra\w*|arteriogra\w*|venogra\w*|(?-i:DSA)",
        "fluoroscopy": r"fluoroscop\w*|barium swallow|barium enema",
        "endoscopy": r"endoscop\w*|colonoscop\w*",
    }.items()
}
MODALITIES = ("ct", "mri", "x-ray")  # the ones kept (and asked about)


def primary_modality(text: str) -> str | None:
    """The modality whose term appears first in ``text`` (one of the keys above), or None."""
    first = None
    for name, rx in _MODALITY_RES.items():
        m = rx.search(text)
        if m and (first is None or m.start() < first[0]):
            first = (m.start(), name)
    return first[1] if first else None


# ---------------------------------------------------------------------------- region
# Whole words only. Ambiguous words are left out on purpose: "head" (femoral head, head of the
# pancreas), "ventricle" (heart or brain), "cervical" (spine or cervix).
_REGION_RES: dict[str, re.Pattern[str]] = {
    name: re.compile(rf"\b(?:{pattern})\b", re.IGNORECASE)
    for name, pattern in {
        "chest": r"chest|thorax|thoracic|lungs?|pulmonary|pleura|pleural|mediastin\w*|heart|cardiac",
        "brain": r"brain|skull|cranial|intracranial|cerebral|cerebellar|cerebellum|cerebrum",
        "abdomen": r"abdomen|abdominal|liver|hepatic|kidneys?|renal|pancreas|pancreatic|spleen|splenic"
        r"|bowel|gallbladder|stomach|gastric|colon|colonic|adrenal",
        "pelvis": r"pelvis|pelvic|bladder|uterus|uterine|ovary|ovarian|prostate|prostatic|rectum|rectal",
        "spine": r"spine|spinal|vertebra|vertebrae|vertebral|lumbar|sacrum|sacral|intervertebral",
    }.items()
}
REGIONS = tuple(_REGION_RES)


def regions(text: str) -> list[str]:
    """Every body region named in ``text``, in :data:`REGIONS` order."""
    return [name for name, rx in _REGION_RES.items() if rx.search(text)]


# ---------------------------------------------------------------------------- side
# Left/right as a side of the patient. Not: heart chambers ("left ventricle"), "left in place".
_SIDE_RE = re.compile(
    r"\b(left|right)(?:[- ]sided)?\b(?!\s+(?:ventric\w*|atri\w*|in place|untreated|behind|over))",
    re.IGNORECASE,
)
SIDES = ("left", "right")


def side(text: str) -> str | None:
    """``"left"`` or ``"right"`` when ``text`` names exactly one side, else None (none or both)."""
    found = {m.group(1).lower() for m in _SIDE_RE.finditer(text)}
    return found.pop() if len(found) == 1 else None


# ---------------------------------------------------------------------------- findings
# name -> (pattern, region it can only occur in, or None). The region lets the QA rules ask a
# safe "no" question: a brain image has no pneumothorax, whatever its caption leaves out.
FINDINGS: dict[str, tuple[str, str | None]] = {
    "fracture": (r"fractures?|fractured", None),
    "effusion": (r"effusions?", None),
    "mass": (r"mass(?:es)?(?!\s+effect)", None),
    "nodule": (r"nodules?", None),
    "cyst": (r"cysts?", None),
    "abscess": (r"abscess(?:es)?", None),
    "aneurysm": (r"aneurysms?", None),
    "calcification": (r"calcifications?", None),
    "hemorrhage": (r"ha?emorrhages?", None),
    "pneumothorax": (r"pneumothora(?:x|ces)", "chest"),
    "consolidation": (r"consolidations?", "chest"),
    "atelectasis": (r"atelectasis", "chest"),
    "cardiomegaly": (r"cardiomegaly", "chest"),
    "hydrocephalus": (r"hydrocephalus", "brain"),
    "midline shift": (r"midline shift", "brain"),
    "ascites": (r"ascites", "abdomen"),
    "pneumoperitoneum": (r"pneumoperitoneum", "abdomen"),
}
_FINDING_RES = {name: re.compile(rf"\b(?:{p})\b", re.IGNORECASE) for name, (p, _) in FINDINGS.items()}
# NegEx-style: a negation cue earlier in the same clause, or a "ruled out" later in it.
_CLAUSE_END = re.compile(r"[.;:,]|\b(?:but|however|although|which|whereas)\b", re.IGNORECASE)
_NEG_BEFORE = re.compile(
    r"\b(?:no|not|without|absence of|absent|negative for|free of|resolution of|rule out)\b", re.IGNORECASE
)
_NEG_AFTER = re.compile(r"\b(?:ruled out|excluded|resolved|absent|not seen|not identified)\b", re.IGNORECASE)


def _negated(text: str, start: int, end: int) -> bool:
    before = _CLAUSE_END.split(text[max(0, start - 80) : start])[-1]
    after = _CLAUSE_END.split(text[end : end + 60])[0]
    return bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after))


def findings(text: str) -> dict[str, bool]:
    """Findings named in ``text``: True if asserted at least once, False if every mention is negated.

    "No pneumothorax" gives ``{"pneumothorax": False}``; a finding never named is absent from the
    result (a caption that does not mention it says nothing about it).
    """
    out: dict[str, bool] = {}
    for name, rx in _FINDING_RES.items():
        mentions = [not _negated(text, m.start(), m.end()) for m in rx.finditer(text)]
        if mentions:
            out[name] = any(mentions)
    return out
