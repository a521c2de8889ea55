"""The teacher stage's resolved configuration: exactly what its outputs (models/teacher.pt, models/purifiers/ and their
dvclive logs) depend on, as a part of params.yaml in params.yaml's shape, with every choice resolved.

The validate stage writes it to results/config/teacher.json (kept in git, `cache: false`). The teacher stage depends
on that file and its code, not on params, and trains from the file's content. A change that leaves the teacher as it
is leaves the file's bytes as they are, so DVC reruns nothing in the teacher stage: switching `method` among ard,
rslad and ltd (one robust PGD-AT teacher), or changing `temperature` when the teacher is not trained at a
temperature. DVC's run cache restores a configuration seen before (the teacher's outputs, its dvclive logs included,
are all cached: DVC skips the run cache for a stage with an uncached output), so ARD, RSLAD and LTD experiments
queued side by side share one teacher.

The file holds (absent keys are not read by the stage):

- ``seed``, ``cuda_deterministic``, ``engine``;
- ``training``: ``{}``, and ``teacher``: the teacher's merged settings (`training`, then `teacher`'s own keys), its
  ``training`` resolved (``auto`` -> what the method needs, robustkd.method_names.TEACHER_TRAINING);
- ``temperature``: only for ``temperature_ce``; ``trades``: ``{beta}``, only for ``trades``;
- ``data``: ``{workers}`` (decoding workers, for a streamed split);
- ``awp``: only for a pgd_at or trades teacher (the losses AWP applies to);
- ``train_attack``, its ε resolved (``null`` -> ``attack.headline_eps``): only when the stage trains adversarially
  (a pgd_at or trades teacher, purification's adversarial purifier teacher);
- ``init_from``: null, or ``{path, sha256}`` of the `teacher.init_from` file (editing the file reruns the teacher:
  the folder pretrained/ is a dep of the validate stage, which then writes the new sha256 here);
- ``teacher_extras``: null, or the method whose plug-in trains models beside the teacher, with their settings
  (purification: ``purifier_student.teachers``, in the fixed order normal, adversarial, and ``purifier_teachers``,
  with ``noise_std`` only when the normal teacher is listed).

Torch-free (the validate stage imports it), except :func:`check_init_from`, which loads the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import ParamsError, ProjectError
from .io import atomic_write_json, sha256_file
from .method_names import TEACHER_EXTRAS, TEACHER_TRAINING
from .params import PURIFIER_TEACHERS, role_settings
from .paths import TEACHER_CONFIG_PATH

ROBUST_TRAININGS = ("pgd_at", "trades")


def teacher_training(params: dict) -> str:
    """`teacher.training`, with ``auto`` resolved to what the method needs."""
    chosen = params["teacher"]["training"]
    return TEACHER_TRAINING[params["method"]] if chosen == "auto" else chosen


def train_attack(params: dict) -> dict:
    """`train_attack` with its ε resolved (``null`` = `attack.headline_eps`)."""
    group = params["train_attack"]
    eps = group["eps"] if group["eps"] is not None else params["attack"]["headline_eps"]
    return {**group, "eps": float(eps)}


def init_from(params: dict) -> dict | None:
    """``{path, sha256}`` of `teacher.init_from`, or None; a clear error when the file is not there."""
    path = params["teacher"]["init_from"]
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        where = "a folder, not a file" if file.is_dir() else f"not found (looked for {file.resolve()})"
        raise ParamsError(f"`teacher.init_from` = {path!r}: {where}. Put the checkpoint there (a robustkd checkpoint or "
                          f"a state_dict saved with torch.save; docs/methods.md), or set `teacher.init_from` to null")
    try:
        digest = sha256_file(file)
    except OSError as err:
        raise ParamsError(f"`teacher.init_from` = {path!r}: cannot read it ({err.strerror or err}); fix its "
                          f"permissions or set `teacher.init_from` to null") from None
    return {"path": path, "sha256": digest}


def _purification_extras(params: dict) -> dict:
    listed = [name for name in PURIFIER_TEACHERS if name in params["purifier_student"]["teachers"]]
    group = role_settings(params, "purifier_teachers")
    if "normal" not in listed:
        group.pop("noise_std")
    return {"purifier_student": {"teachers": listed}, "purifier_teachers": group}


# method -> the settings its plug-in's Method.train_teacher_extras reads (robustkd.method_names.TEACHER_EXTRAS)
EXTRAS = {"purification": _purification_extras}


def resolve(params: dict) -> dict:
    """The teacher stage's configuration (see the module's docstring); ``params`` is a validated params.yaml."""
    training = teacher_training(params)
    teacher = {**role_settings(params, "teacher"), "training": training}
    del teacher["init_from"]  # recorded once, with the file's sha256 (``init_from``)
    config = {"seed": params["seed"], "cuda_deterministic": params["cuda_deterministic"], "engine": params["engine"],
              "data": {"workers": params["data"]["workers"]},  # decoding workers of a streamed split
              "training": {}, "teacher": teacher, "init_from": init_from(params), "teacher_extras": None}
    if training == "temperature_ce":
        config["temperature"] = params["temperature"]
    if training == "trades":
        config["trades"] = {"beta": params["trades"]["beta"]}
    adversarial = training in ROBUST_TRAININGS
    method = params["method"]
    if method in TEACHER_EXTRAS:
        extras = EXTRAS[method](params)
        config.update(extras, teacher_extras=method)
        adversarial = adversarial or "adversarial" in extras.get("purifier_student", {}).get("teachers", [])
    if adversarial:
        config["train_attack"] = train_attack(params)
    if training in ROBUST_TRAININGS:  # a PGD-AT / TRADES teacher gets adversarial weight perturbation when enabled
        config["awp"] = params["awp"]
    # as it reads back from JSON (tuples are lists), so a file and a fresh resolution compare equal
    return json.loads(json.dumps(config))


def check_init_from(params: dict) -> None:
    """Load `teacher.init_from` as the teacher stage will (weights_only) and check it against the teacher's
    architecture, so that a bad file stops the pipeline at the validate stage, before DVC removes any output."""
    if params["teacher"]["init_from"] is None:
        return
    from . import pretrained  # imports torch: only when there is a file to check

    teacher = role_settings(params, "teacher")
    pretrained.load_state(params["teacher"]["init_from"], pretrained.spec_for(teacher, params["dataset"]))


def write(params: dict) -> dict:
    config = resolve(params)
    atomic_write_json(TEACHER_CONFIG_PATH, config)
    return config


def read(params: dict) -> dict:
    """The configuration the teacher stage trains from: results/config/teacher.json, which must be what params.yaml
    resolves to now (else the file is stale: the validate stage has not run since params.yaml or the init file
    changed)."""
    path = TEACHER_CONFIG_PATH
    if not path.is_file():
        raise ProjectError(f"{path}: not found. The validate stage writes it: run `dvc repro` (or "
                           f"`python src/validate.py`) first.")
    written, now = json.loads(path.read_text()), resolve(params)
    if written != now:
        keys = sorted(k for k in {*written, *now} if written.get(k) != now.get(k))
        raise ProjectError(f"{path}: stale: its {', '.join(keys)} differ from what params.yaml (and the "
                           f"`teacher.init_from` file) give now. Run `dvc repro` (or `python src/validate.py` first).")
    return written
