"""Manifests: what each multi-model training stage produced, in one format, so that the predict and attack stages
read data instead of method code.

``<folder>/models.json``::

    {"stage": "assistant", "index": 0, "note": null,
     "models": [{"name": "assistant_1", "checkpoint": "models/assistants/assistant_1.pt"}, ...]}

An entry may also say how the attack stage treats the model:

- ``"transfer_source": true``: examples crafted on it are replayed on every model (``transfer_<name>``);
- ``"suite_param": "<dotted params key>"``: that key (``full`` | ``reduced``) picks the model's attack suite;
- ``"classifier": "<model>"``: the model purifies inputs for that classifier, so every model is also attacked with
  examples crafted on the classifier alone (the purification paper's protocol).

``index`` orders the manifests of one stage family (the DARHT pool's order); ``note`` says why a stage trained
nothing. The teacher, student and surrogate are one file each, at fixed paths (robustkd.paths). Torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ProjectError
from .io import atomic_write_json
from .paths import ASSISTANTS_DIR, DARHT_DIR, STUDENT_PATH, TEACHER_EXTRAS_DIR, TEACHER_PATH

MANIFEST = "models.json"


def entry(name: str, checkpoint: Path, **evaluation) -> dict:
    return {"name": name, "checkpoint": str(checkpoint), **evaluation}


def write(folder: Path, stage: str, models: list[dict], index: int = 0, note: str | None = None) -> None:
    atomic_write_json(folder / MANIFEST, {"stage": stage, "index": index, "note": note, "models": models})


def read(folder: Path, stage: str) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise ProjectError(f"{path}: not found. Run `dvc repro {stage}` first.")
    return json.loads(path.read_text())


def checkpoints(folder: Path, stage: str) -> list[Path]:
    return [Path(m["checkpoint"]) for m in read(folder, stage)["models"]]


def evaluated_models() -> dict[str, dict]:
    """{name: manifest entry} of every model the predict and attack stages evaluate, in chain order: the teacher, the
    teacher stage's other models, the assistants, the DARHT teachers (pool order), the student."""
    pool = sorted((read(folder, f"darht_teacher@{folder.name}") for folder in DARHT_DIR.iterdir()
                   if folder.is_dir()), key=lambda manifest: manifest["index"]) if DARHT_DIR.is_dir() else []
    manifests = [read(TEACHER_EXTRAS_DIR, "teacher"), read(ASSISTANTS_DIR, "assistant"), *pool]
    models = [entry("teacher", TEACHER_PATH), *(m for manifest in manifests for m in manifest["models"]),
              entry("student", STUDENT_PATH)]
    return {m["name"]: m for m in models}


def write_live_note(path: Path, key: str, models: list[dict]) -> None:
    """A stage's live folder keeps a note of its models' files: git drops empty folders, and DVC would then see
    that output missing."""
    atomic_write_json(path, {key: [Path(m["checkpoint"]).name for m in models]})
