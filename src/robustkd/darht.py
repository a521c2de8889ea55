"""Method ``darht`` (Deng et al. 2024, DARHT) on the pipeline.

- ``darht_teacher@<name>`` (one DVC stage per entry of ``darht.pool``, a ``foreach`` in dvc.yaml): trains that
  teacher (its own architecture, size, training and seed; ``darht.teacher_training`` for the rest) into
  models/darht/<name>/teacher.pt, or, when the method is not darht or the entry has ``use: false``, only writes
  the marker models/darht/<name>/teacher.json saying so. The marker path imports no torch, so the stages of
  unused entries cost a fraction of a second and the default pipeline is not slowed down. Each teacher is an
  output of its own stage: changing one entry retrains that teacher only.
- teacher stage: the usual ``teacher`` model, natural (a reference, evaluated beside the student).
- student stage: the student (``student`` group) with a feature-map head (C·K, then C) learns from the K used
  teachers, in pool order, with :class:`robustkd.losses.DARHT`.
- attack stage: every used teacher (``darht_<name>``) and the student are evaluated; PGD examples crafted on each
  teacher are replayed on every model (``transfer_darht_<name>``), which gives both the black-box transfer from
  each teacher to the student and the K x K transferability matrix (metrics stage).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import ParamsError
from .io import atomic_write_json

DARHT_DIR = Path("models") / "darht"
LIVE_DARHT_DIR = Path("dvclive") / "darht"
MARKER = "teacher.json"
CHECKPOINT = "teacher.pt"
TRAINING_OVERRIDES = ("epochs", "batch_size", "lr")


def role(name: str) -> str:
    """The model's name in checkpoints, resume files, results and metrics.json."""
    return f"darht_{name}"


def checkpoint_path(name: str) -> Path:
    return DARHT_DIR / name / CHECKPOINT


def used_teachers(params: dict) -> list[str]:
    """The K teachers of this run, in pool order (empty unless method = darht)."""
    if params["method"] != "darht":
        return []
    return [name for name, t in params["darht"]["pool"].items() if t["use"]]


def training_group(params: dict, name: str) -> dict:
    """The training settings of one teacher: the shared ones, its overrides, its architecture and size."""
    member = params["darht"]["pool"][name]
    group = dict(params["darht"]["teacher_training"])
    group.update({k: member[k] for k in TRAINING_OVERRIDES if k in member})
    group.update(arch=member["arch"], width=member["width"], depth=member["depth"])
    return group


def _write_marker(name: str, marker: dict) -> None:
    atomic_write_json(DARHT_DIR / name / MARKER, marker)
    # Also in the live folder: git drops empty folders, and DVC would then see that output missing.
    atomic_write_json(LIVE_DARHT_DIR / name / MARKER, marker)


def train_pool_member(params: dict, name: str) -> None:
    """Stage ``darht_teacher@<name>``."""
    pool = params["darht"]["pool"]
    if name not in pool:
        raise ParamsError(f"`darht.pool` has no teacher {name!r}; it has: {', '.join(pool)}")
    member = pool[name]
    # DVC removes a stage's outputs before running it; clear leftovers of a manual run too.
    shutil.rmtree(DARHT_DIR / name, ignore_errors=True)
    shutil.rmtree(LIVE_DARHT_DIR / name, ignore_errors=True)
    marker = {"name": name, "model": role(name), "index": list(pool).index(name), "arch": member["arch"],
              "training": member["training"]}
    if name not in used_teachers(params):
        reason = (f"method is {params['method']!r}, not darht" if params["method"] != "darht"
                  else "`use: false` in darht.pool")
        _write_marker(name, {**marker, "used": False, "reason": reason})
        print(f"[darht_teacher@{name}] not trained: {reason}")
        return

    from .methods import TEACHER_TRAININGS, loss_params
    from .models import model_spec
    from .pipeline import load_training_data, train_role

    meta, train_data, val_data = load_training_data()
    group = training_group(params, name)
    loss = TEACHER_TRAININGS[member["training"]](params)
    print(f"[darht_teacher@{name}] {member['arch']} (width {member['width']}, depth {member['depth']}), "
          f"{member['training']}, {group['epochs']} epoch(s)")

    def build(device):
        from .models import build_model, place

        spec = model_spec(group["arch"], meta, group["width"], depth=group["depth"])
        return place(build_model(**spec), device), spec

    info = train_role(role(name), group, params["seed"] + 2000 + member["seed"], loss, checkpoint_path(name),
                      LIVE_DARHT_DIR / name / "live", meta, train_data, val_data,
                      extra_info={"method": params["method"], "training": member["training"], "temperature": 1.0,
                                  "darht_teacher": name, "loss_params": loss_params(params)},
                      cuda_deterministic=params["cuda_deterministic"], engine=params["engine"],
                      params_group=f"darht.pool.{name}",
                      build=build)
    _write_marker(name, {**marker, "used": True, "val_acc": info["val_acc"], "best_epoch": info["best_epoch"]})


def teacher_checkpoints(params: dict) -> list[tuple[str, Path]]:
    """(name, checkpoint) of the K used teachers; a clear error if a teacher stage has not trained one."""
    out = []
    for name in used_teachers(params):
        path, marker = checkpoint_path(name), DARHT_DIR / name / MARKER
        if not path.is_file():
            why = json.loads(marker.read_text()).get("reason", "") if marker.is_file() else "no output yet"
            raise ParamsError(f"{path}: not found ({why}). DARHT teacher {name!r} is trained by the stage "
                              f"`darht_teacher@{name}`: run `dvc repro darht_teacher@{name}` (or `dvc repro`).")
        out.append((name, path))
    return out


def student_settings(params: dict) -> dict:
    """darht's own settings, as recorded with the student (the pool is recorded as the teachers' names)."""
    return {k: v for k, v in params["darht"].items() if k not in ("pool", "teacher_training", "teacher_evaluation")}


def train_student(params: dict, meta: dict, train_data, val_data) -> None:
    """Student stage for method darht."""
    from .methods import METHODS, loss_params
    from .models import build_model, model_spec, place
    from .pipeline import LIVE_DIR, MODELS_DIR, load_model, train_role

    teachers = teacher_checkpoints(params)
    names = [name for name, _ in teachers]
    models = [load_model(path)[0] for _, path in teachers]
    group = params["student"]
    print(f"[student] darht: {len(names)} teacher(s): {', '.join(names)}")

    def build(device):
        spec = model_spec(group["arch"], meta, group["width"], head_teachers=len(names))
        return place(build_model(**spec), device), spec

    train_role("student", group, params["seed"] + 1000, METHODS["darht"].student_loss(params, group, models),
               MODELS_DIR / "student.pt", LIVE_DIR / "student", meta, train_data, val_data,
               extra_info={"method": "darht", "temperature": 1.0, "output_temperature": 1.0,
                           "distilled_from": "+".join(role(n) for n in names),
                           "darht_teachers": names, "darht": student_settings(params),
                           "loss_params": loss_params(params)},
               upstream=[path for _, path in teachers], cuda_deterministic=params["cuda_deterministic"],
               engine=params["engine"], build=build)


def evaluated_teachers(student_path: Path) -> dict[str, Path]:
    """{model name: checkpoint} of the teachers the student at ``student_path`` learnt from (empty for other
    methods). Read from the student's checkpoint, so a teacher left on disk by an earlier run is never listed."""
    from .models import read_info

    names = read_info(student_path).get("darht_teachers") or []
    return {role(n): checkpoint_path(n) for n in names}
