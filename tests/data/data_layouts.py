"""Tiny copies of the public datasets' on-disk layouts, written by the tests themselves (no downloads)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image


def png(value: int, size: int = 24) -> bytes:
    """A small grayscale PNG whose content (and so sha256) is set by `value`."""
    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(value: int, size: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, format="JPEG")
    return buf.getvalue()


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Rows as the datasets library stores them: image columns are structs {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    fields = []
    for key, value in rows[0].items():
        if key == "image":
            fields.append((key, image_type))
        elif isinstance(value, list):
            fields.append((key, pa.list_(pa.string())))
        else:
            fields.append((key, pa.string()))
    table = pa.Table.from_pylist(rows, schema=pa.schema(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def image_cell(data: bytes | None, name: str = "") -> dict[str, Any]:
    return {"bytes": data, "path": name or None}


# ---------------------------------------------------------------------------- VQA-RAD


def vqa_rad(root: Path) -> Path:
    """flaviagiammarino/vqa-rad: 16 train rows (rows 6-8 malformed, one of each kind), 3 test rows.

    Image 1 is in 2 train rows and 1 test row (a leak the loader must cut); image 2 is in 2 train
    rows only; 8 more images once each in train (10 train images in all); test also has images 8, 9.
    """
    q = "is there a fracture?"
    train = [
        {"image": image_cell(png(1), "rad1.jpg"), "question": q, "answer": "yes"},  # row 1: leaks
        {"image": image_cell(png(1), "rad1.jpg"), "question": "what organ?", "answer": "lung"},  # row 2
        {"image": image_cell(png(2)), "question": q, "answer": "no"},  # row 3
        {"image": image_cell(png(2)), "question": "where is it?", "answer": "Left  Lung"},  # row 4
        {"image": image_cell(png(3)), "question": q, "answer": "Yes"},  # row 5
        {"image": image_cell(png(4)), "question": q, "answer": ""},  # row 6: empty answer
        {"image": image_cell(None), "question": q, "answer": "no"},  # row 7: missing image
        {"image": image_cell(b"not an image"), "question": q, "answer": "no"},  # row 8: unreadable
        {"image": image_cell(png(5)), "question": "what plane?", "answer": "axial"},  # row 9
        {"image": image_cell(png(6)), "question": q, "answer": "no"},  # row 10
        *(
            {"image": image_cell(png(20 + k)), "question": q, "answer": "yes" if k % 2 else "no"}
            for k in range(6)
        ),
    ]
    test = [
        {"image": image_cell(png(1)), "question": "is the heart enlarged?", "answer": "no"},
        {"image": image_cell(png(8)), "question": q, "answer": "yes"},
        {"image": image_cell(png(9)), "question": "what modality?", "answer": "ct"},
    ]
    write_parquet(root / "data" / "train-00000-of-00001-0a1b2c.parquet", train)
    write_parquet(root / "data" / "test-00000-of-00001-3d4e5f.parquet", test)
    (root / "README.md").write_text("---\nlicense: cc0-1.0\n---\n")
    return root


def unsplit_parquet(root: Path, n_images: int = 20) -> Path:
    """A parquet VQA set with only a train split: 2 questions (closed + open) per image."""
    rows = []
    for i in range(n_images):
        rows.append(
            {
                "image": image_cell(png(10 + i)),
                "question": "is it normal?",
                "answer": "yes" if i % 2 else "no",
            }
        )
        rows.append({"image": image_cell(png(10 + i)), "question": "which organ?", "answer": "liver"})
    write_parquet(root / "data" / "train-00000-of-00001.parquet", rows)
    return root


# ---------------------------------------------------------------------------- SLAKE


def slake(root: Path, zipped: bool = False) -> Path:
    """BoKelvin/SLAKE: json splits + imgs/<folder>/source.jpg (or imgs.zip, as the hub ships it)."""
    images = {f"xmlab{i}/source.jpg": jpeg(40 * i) for i in range(1, 5)}
    if zipped:
        with zipfile.ZipFile(root / "imgs.zip", "w") as z:
            for name, data in images.items():
                z.writestr(f"imgs/{name}", data)
    else:
        for name, data in images.items():
            (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "imgs" / name).write_bytes(data)

    def q(qid: int, img: int, question: str, answer: str, atype: str, content: str, lang: str = "en") -> dict:
        return {
            "img_id": img,
            "img_name": f"xmlab{img}/source.jpg",
            "question": question,
            "answer": answer,
            "q_lang": lang,
            "location": "Lung",
            "modality": "CT",
            "answer_type": atype,
            "base_type": "vqa",
            "content_type": content,
            "triple": ["vhead", "_", "_"],
            "qid": qid,
        }

    train = [
        q(1, 1, "Does the picture contain lung?", "Yes", "CLOSED", "Organ"),
        q(2, 1, "图片中包含肺吗？", "是", "CLOSED", "Organ", lang="zh"),
        q(3, 1, "Which organ is abnormal?", "Left Lung", "OPEN", "Abnormality"),
        q(4, 9, "Is this a CT?", "Yes", "CLOSED", "Modality"),  # row 4: its image does not exist
        q(5, 2, "What modality is used?", "CT", "OPEN", "Modality"),
        q(6, 2, "Is it normal?", "No", "MAYBE", "Abnormality"),  # row 6: bad answer_type
    ]
    validation = [q(7, 3, "Where is the liver?", "Right", "OPEN", "Position")]
    test = [
        q(8, 4, "Is the lung healthy?", "No", "CLOSED", "Abnormality"),
        q(9, 4, "肺健康吗？", "否", "CLOSED", "Abnormality", lang="zh"),
    ]
    for name, rows in (("train.json", train), ("validation.json", validation), ("test.json", test)):
        (root / name).write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return root


# ---------------------------------------------------------------------------- PMC-VQA


PMC_HEADER = [
    "Figure_path",
    "Question",
    "Anwser",
    "Choice A",
    "Choice B",
    "Choice C",
    "Choice D",
    "Anwser_label",
]


def pmc_vqa(root: Path) -> Path:
    """xmcmic/PMC-VQA, the older files: misspelled Anwser columns, " A:..." choices, figures/ folder."""
    for i in range(1, 6):
        (root / "figures").mkdir(parents=True, exist_ok=True)
        (root / "figures" / f"PMC{i}_F1.jpg").write_bytes(jpeg(30 * i))
    choices = [" A:CT scan ", " B:MRI ", " C:X-ray ", " D:Ultrasound "]
    train = [
        ["PMC1_F1.jpg", "What imaging technique was used?", "CT scan", *choices, "A"],
        ["PMC2_F1.jpg", "What modality is shown?", " B:MRI", *choices, "B"],
        ["PMC3_F1.jpg", "Which technique?", "X-ray", *choices, "E"],  # row 3: label names no choice
        ["PMC4_F1.jpg", "What is shown?", "Ultrasound", *choices, ""],  # row 4: by the answer text
        ["PMC9_F1.jpg", "What is shown?", "MRI", *choices, "B"],  # row 5: its figure does not exist
    ]
    test = [["PMC5_F1.jpg", "Which modality?", "X-ray", *choices, "C"]]
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(PMC_HEADER)
            w.writerows(rows)
    return root


# ---------------------------------------------------------------------------- ROCOv2

WORDS_64 = "CT of the chest " + " ".join(["word"] * 60)  # 64 words exactly
WORDS_65 = WORDS_64 + " more"


def rocov2(root: Path) -> Path:
    """eltorio/ROCOv2-radiology: parquet with image, image_id, caption, cui; train/validation/test."""
    train = [
        {"image": image_cell(png(100)), "image_id": "ROCOv2_2023_train_000001",
         "caption": "Axial CT of the chest showing a left pleural effusion.", "cui": ["C0040405"]},
        {"image": image_cell(png(101)), "image_id": "ROCOv2_2023_train_000002",
         "caption": "Abdominal ultrasound, then CT, shows a liver cyst.", "cui": ["C0041618"]},
        {"image": image_cell(png(102)), "image_id": "ROCOv2_2023_train_000003",
         "caption": "PET-CT of the whole body.", "cui": ["C0032743"]},
        {"image": image_cell(png(103)), "image_id": "ROCOv2_2023_train_000004",
         "caption": WORDS_64, "cui": []},
        {"image": image_cell(png(104)), "image_id": "ROCOv2_2023_train_000005",
         "caption": WORDS_65, "cui": []},
        {"image": image_cell(png(105)), "image_id": "ROCOv2_2023_train_000006",
         "caption": "Image of the right femur showing a fracture.", "cui": ["C1306645"]},
        {"image": image_cell(png(106)), "image_id": "ROCOv2_2023_train_000007", "caption": "", "cui": []},
        {"image": image_cell(png(107)), "image_id": "ROCOv2_2023_train_000008",
         "caption": "T2-weighted MRI of the brain with a right frontal mass and no hemorrhage.",
         "cui": ["C0024485"]},
    ]  # fmt: skip
    validation = [
        {"image": image_cell(png(110)), "image_id": "ROCOv2_2023_valid_000001",
         "caption": "Chest X-ray with a right pneumothorax.", "cui": ["C1306645"]},
    ]  # fmt: skip
    test = [
        {"image": image_cell(png(120)), "image_id": "ROCOv2_2023_test_000001",
         "caption": "Contrast-enhanced CT of the abdomen: a mass in the liver.", "cui": ["C0040405"]},
    ]  # fmt: skip
    write_parquet(root / "data" / "train-00000-of-00001.parquet", train)
    write_parquet(root / "data" / "validation-00000-of-00001.parquet", validation)
    write_parquet(root / "data" / "test-00000-of-00001.parquet", test)
    return root


# ---------------------------------------------------------------------------- MedPix


def medpix(root: Path) -> Path:
    """adishourya/MEDPIX-ShortQA: capitalised split names Train / Valid / Test, extra id columns."""

    def row(i: int, q: str, a: str) -> dict:
        return {
            "image_id": f"MPX{i}",
            "mode": "CT",
            "question": q,
            "answer": a,
            "image": image_cell(png(200 + i)),
        }

    write_parquet(root / "data" / "Train-00000-of-00001-7170a825.parquet",
                  [row(1, "Is there a mass?", "Yes"), row(2, "What organ is shown?", "Kidney")])  # fmt: skip
    write_parquet(root / "data" / "Valid-00000-of-00001-51bc8b4b.parquet", [row(3, "Is it normal?", "no")])
    write_parquet(root / "data" / "Test-00000-of-00001-2ba5536e.parquet", [row(4, "Which side?", "left")])
    return root
