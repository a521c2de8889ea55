"""A small ILSVRC-2012 tree in the exact on-disk layout of the real one, written by the tests.

    <raw>/imagenet/train/<wnid>/<wnid>_<k>.JPEG
    <raw>/imagenet/val/ILSVRC2012_val_00000001.JPEG ...                      (flat, as the official val tar)
    <raw>/imagenet/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt   (ILSVRC2012_ID per line)
    <raw>/imagenet/ILSVRC2012_devkit_t12/data/meta.mat                         (synsets: ILSVRC2012_ID -> WNID)
  or <raw>/imagenet/LOC_val_solution.csv + LOC_synset_mapping.txt             (the Kaggle form)
  or <raw>/imagenet/val/<wnid>/ILSVRC2012_val_*.JPEG                          (class folders)

The ILSVRC2012_IDs are deliberately not in sorted-wnid order (as in the real devkit), so a loader that took the
ID for the class index would give wrong labels. The meta.mat also holds a non-leaf synset (num_children > 0), which
is not a class.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

WNIDS = ["n01440764", "n01443537", "n01484850"]      # sorted: class indices 0, 1, 2
ILSVRC_IDS = {"n01484850": 1, "n01440764": 2, "n01443537": 3}  # the devkit's order differs from the sorted one
WORDS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark, white shark"}


def jpeg(rng: np.random.Generator, w: int, h: int, grey: bool = False) -> bytes:
    from PIL import Image

    base = rng.integers(30, 220, size=3)
    ramp = np.linspace(0, 30, w)[None, :, None]
    img = np.clip(base[None, None, :] + ramp + rng.integers(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    pil = Image.fromarray(img)
    if grey:  # some real ImageNet JPEGs are greyscale
        pil = pil.convert("L")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_meta_mat(path: Path) -> None:
    from scipy import io as sio

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(ILSVRC_IDS[w], w, WORDS[w], f"gloss of {w}", 0, np.zeros((1, 0)), 0, 4) for w in WNIDS]
    rows.append((1001, "n00001740", "entity", "the top synset", 3, np.array([1, 2, 3]), 19, 0))  # not a class
    arr = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        arr[i, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"synsets": arr})


def write_imagenet_tree(raw_dir: Path, val_form: str = "devkit", per_class: int = 4, n_val: int = 6,
                        seed: int = 0) -> dict:
    """Write the tree (40x40 and 48x40 JPEGs); ``val_form``: devkit | loc | folders. Returns {"val": [(stem, label)]}
    in file-name order, label = class index (sorted wnid)."""
    rng = np.random.default_rng(seed)
    root = Path(raw_dir) / "imagenet"
    for c, w in enumerate(WNIDS):
        folder = root / "train" / w
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (folder / f"{w}_{k + 1}.JPEG").write_bytes(jpeg(rng, 48 if k % 2 else 40, 40, grey=k == 0))
    labels = [int(v) for v in rng.integers(0, len(WNIDS), size=n_val)]
    labels[:len(WNIDS)] = range(len(WNIDS))  # every class in val
    val = []
    for i, label in enumerate(labels, 1):
        stem = f"ILSVRC2012_val_{i:08d}"
        folder = root / "val" / (WNIDS[label] if val_form == "folders" else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.JPEG").write_bytes(jpeg(rng, 40, 48 if i % 2 else 40))
        val.append((stem, label))
    if val_form == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        write_meta_mat(data / "meta.mat")
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ILSVRC_IDS[WNIDS[label]]}\n" for _, label in val))
    elif val_form == "loc":
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
        (root / "LOC_val_solution.csv").write_text(
            "ImageId,PredictionString\n" + "".join(f"{stem},{WNIDS[label]} 1 2 30 31 {WNIDS[label]} 3 4 20 21\n"
                                                   for stem, label in reversed(val)))
    elif val_form == "folders":
        (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
    else:
        raise ValueError(val_form)
    return {"root": root, "val": val}
