"""Method ``darht`` (Deng et al. 2024, DARHT): its pool of teachers, and their stages. The plug-in itself (the
student): robustkd.methods.darht.

- ``darht_teacher@<name>`` (one DVC stage per entry of ``darht.pool``, a ``foreach`` in dvc.yaml): trains that
  teacher (its own architecture, size, training and seed; ``darht.teacher_training`` for the rest) into
  models/darht/<name>/teacher.pt and lists it in its manifest (models/darht/<name>/models.json), or, when the
  method is not darht or the entry has ``use: false``, writes an empty manifest saying why. That path imports no
  torch (nor does this module's top level), so the stages of unused entries cost a fraction of a second and the
  default pipeline is not slowed down. Each teacher is an
  output of its own stage: changing one entry retrains that teacher only.
- teacher stage: the usual ``teacher`` model, natural (a reference, evaluated beside the student).
- student stage: the student (``student`` group) with a feature-map head (C·K, then C) learns from the K used
  teachers, in pool order, with :class:`robustkd.losses.DARHT`.
- attack stage: every used teacher (``darht_<name>``, from the manifests) and the student are evaluated; each
  teacher's manifest entry makes it a transfer source (PGD examples crafted on it are replayed on every model,
  ``transfer_darht_<name>``: the black-box transfer to the student and the K x K transferability matrix) and lets
  ``darht.teacher_evaluation`` pick its attack suite.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import manifest
from ..errors import ParamsError
from ..io import atomic_write_json
from ..params import darht_teacher_settings
from ..paths import LIVE_DIR, darht_teacher_dir

LIVE_DARHT_DIR = LIVE_DIR / "darht"
# The live folder's note (git drops empty folders, and DVC would then see that output missing).
LIVE_NOTE = "teacher.json"
CHECKPOINT = "teacher.pt"


def role(name: str) -> str:
    """The model's name in checkpoints, resume files, results and metrics.json."""
    return f"darht_{name}"


def checkpoint_path(name: str) -> Path:
    return darht_teacher_dir(name) / CHECKPOINT


def used_teachers(params: dict) -> list[str]:
    """The K teachers of this run, in pool order (empty unless method = darht)."""
    if params["method"] != "darht":
        return []
    return [name for name, t in params["darht"]["pool"].items() if t["use"]]


def training_group(params: dict, name: str) -> dict:
    """The training settings of one teacher (robustkd.params.darht_teacher_settings)."""
    return darht_teacher_settings(params, name)


def _write_outputs(name: str, note: dict, models: list[dict], reason: str | None) -> None:
    manifest.write(darht_teacher_dir(name), f"darht_teacher@{name}", models, index=note["index"], note=reason)
    atomic_write_json(LIVE_DARHT_DIR / name / LIVE_NOTE, note)


def train_pool_member(params: dict, name: str) -> None:
    """Stage ``darht_teacher@<name>``."""
    pool = params["darht"]["pool"]
    if name not in pool:
        raise ParamsError(f"`darht.pool` has no teacher {name!r}; it has: {', '.join(pool)}")
    member = pool[name]
    # DVC removes a stage's outputs before running it; clear leftovers of a manual run too.
    shutil.rmtree(darht_teacher_dir(name), ignore_errors=True)
    shutil.rmtree(LIVE_DARHT_DIR / name, ignore_errors=True)
    marker = {"name": name, "model": role(name), "index": list(pool).index(name), "arch": member["arch"],
              "training": member["training"]}
    if name not in used_teachers(params):
        reason = (f"method is {params['method']!r}, not darht" if params["method"] != "darht"
                  else "`use: false` in darht.pool")
        _write_outputs(name, {**marker, "used": False, "reason": reason}, [], reason)
        print(f"[darht_teacher@{name}] not trained: {reason}")
        return

    from ..models import build_model, model_spec, place
    from ..roles import RoleSpec, load_training_run, train_role
    from .base import TEACHER_TRAININGS, loss_params

    run = load_training_run(params, awp=True)
    group = training_group(params, name)
    loss = TEACHER_TRAININGS[member["training"]](params)
    print(f"[darht_teacher@{name}] {member['arch']} (width {member['width']}, depth {group['depth']}), "
          f"{member['training']}, {group['epochs']} epoch(s)")

    def build(device):
        spec = model_spec(group["arch"], run.meta, group["width"], depth=group["depth"])
        return place(build_model(**spec), device), spec

    record = {"method": params["method"], "training": member["training"], "temperature": 1.0,
              "darht_teacher": name, "loss_params": loss_params(params)}
    info = train_role(RoleSpec(role(name), group, params["seed"] + 2000 + member["seed"], loss, checkpoint_path(name),
                               LIVE_DARHT_DIR / name / "live", record, params_group=f"darht.pool.{name}",
                               build=build), run)
    # A transfer source, and its attack suite is `darht.teacher_evaluation`'s (the attack stage's param).
    evaluated = manifest.entry(role(name), checkpoint_path(name), transfer_source=True,
                               suite_param="darht.teacher_evaluation")
    _write_outputs(name, {**marker, "used": True, "val_acc": info["val_acc"], "best_epoch": info["best_epoch"]},
                   [evaluated], None)


def teacher_checkpoints(params: dict, names: list[str] | None = None) -> list[tuple[str, Path]]:
    """(name, checkpoint) of ``names`` (default: every used teacher); a clear error if a teacher stage has not
    trained one."""
    out = []
    for name in used_teachers(params) if names is None else names:
        path, folder = checkpoint_path(name), darht_teacher_dir(name)
        if not path.is_file():
            why = ((json.loads((folder / manifest.MANIFEST).read_text())["note"] or "")
                   if (folder / manifest.MANIFEST).is_file() else "no output yet")
            raise ParamsError(f"{path}: not found ({why}). DARHT teacher {name!r} is trained by the stage "
                              f"`darht_teacher@{name}`: run `dvc repro darht_teacher@{name}` (or `dvc repro`).")
        out.append((name, path))
    return out
