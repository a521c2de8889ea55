"""One schema for params.yaml, checked at the start of every stage, before any data is read.

Every problem is reported at once; each message names the key, the value, what is allowed and,
for an unknown key, the closest valid one.
"""
from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ParamsError
from .method_names import METHOD_NAMES

ARCHS = ("papernot_cnn", "lenet", "resnet18", "mobilenetv2", "resnet_small", "mobilenetv2_small", "vit_small",
         "wide_resnet", "resnet50")
DATASET_NAMES = ("fashion_mnist", "mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet")
# data.loader (robustkd.splits): auto = stream for the datasets too large for memory, memory for the others
DATA_LOADERS = ("auto", "memory", "stream")
STREAM_DATASETS = ("imagenet", "tinyimagenet")  # stored as image files: the only ones the stream path reads
STREAM_ONLY = ("imagenet",)                       # no in-memory path
PURIFIER_ARCHS = ("cae", "identity")
TEACHER_TRAININGS = ("auto", "natural", "temperature_ce", "pgd_at", "trades")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
WIDTHS = ("mnist", "cifar")
DARHT_TEACHER_TRAININGS = ("pgd_at", "trades", "natural")
DARHT_KD_LOSSES = ("kl", "mse")
TEACHER_EVALUATIONS = ("reduced", "full")
AUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
PURIFIER_TEACHERS = ("normal", "adversarial")  # `purifier_student.teachers`: the purifier teachers, by name
PRETRAINED_DIR = "pretrained"  # `teacher.init_from` files live here: a dep of the validate stage (dvc.yaml)


# --- field types -----------------------------------------------------------------------------
class Field(ABC):
    @abstractmethod
    def check(self, key: str, value: Any) -> list[str]:
        """Return one message per problem with ``value`` (empty when valid)."""

    def describe(self) -> str:
        return ""


@dataclass
class Int(Field):
    min: int | None = None
    max: int | None = None

    def check(self, key, value):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"`{key}` = {value!r}: must be an integer {self.describe()}"]
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            return [f"`{key}` = {value!r}: out of range; allowed: integer {self.describe()}"]
        return []

    def describe(self):
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"in [{lo}, {hi}]"


@dataclass
class Float(Field):
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False

    def check(self, key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return [f"`{key}` = {value!r}: must be a finite number {self.describe()}"]
        too_low = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        too_high = self.max is not None and value > self.max
        if too_low or too_high:
            return [f"`{key}` = {value!r}: out of range; allowed: {self.describe()}"]
        return []

    def describe(self):
        lo = "-inf" if self.min is None else self.min
        hi = "inf" if self.max is None else self.max
        return f"{'(' if self.min_exclusive else '['}{lo}, {hi}]"


@dataclass
class Bool(Field):
    def check(self, key, value):
        return [] if isinstance(value, bool) else [f"`{key}` = {value!r}: must be true or false"]


@dataclass
class Str(Field):
    def check(self, key, value):
        return [] if isinstance(value, str) and value else [f"`{key}` = {value!r}: must be a non-empty string"]


@dataclass
class Choice(Field):
    choices: tuple[str, ...]

    def check(self, key, value):
        if isinstance(value, str) and value in self.choices:
            return []
        hint = difflib.get_close_matches(str(value), self.choices, n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        return [f"`{key}` = {value!r}: unknown; allowed: {', '.join(self.choices)}{did_you_mean}"]


@dataclass
class Nullable(Field):
    inner: Field

    def check(self, key, value):
        return [] if value is None else self.inner.check(key, value)


@dataclass
class ListOf(Field):
    item: Field
    min_len: int = 1
    unique: bool = False

    def check(self, key, value):
        if not isinstance(value, list) or len(value) < self.min_len:
            return [f"`{key}` = {value!r}: must be a list of at least {self.min_len} item(s)"]
        errors = [e for i, v in enumerate(value) for e in self.item.check(f"{key}[{i}]", v)]
        if not errors and self.unique and len(set(map(repr, value))) != len(value):
            errors.append(f"`{key}` = {value!r}: items must be unique")
        return errors


@dataclass
class SubsetOf(Field):
    """A non-empty list of distinct names out of ``choices`` (in any order)."""
    choices: tuple[str, ...]

    def check(self, key, value):
        default = "[" + ", ".join(self.choices) + "]"
        if not isinstance(value, list) or not value:
            return [f"`{key}` = {value!r}: must be a non-empty list of {', '.join(self.choices)} "
                    f"(e.g. {default}, or one of them alone)"]
        errors = []
        for i, v in enumerate(value):
            if not (isinstance(v, str) and v in self.choices):
                hint = difflib.get_close_matches(str(v), self.choices, n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                errors.append(f"`{key}[{i}]` = {v!r}: unknown; allowed: {', '.join(self.choices)}{did_you_mean}")
        twice = sorted({v for v in value if isinstance(v, str) and value.count(v) > 1})
        if twice:
            errors.append(f"`{key}` = {value!r}: {', '.join(map(repr, twice))} listed more than once; list each once")
        return errors

    def describe(self):
        return f"a non-empty list of {', '.join(self.choices)}"


@dataclass
class AnyOf(Field):
    """Valid if any of ``options`` accepts the value (e.g. a width preset name or an integer)."""
    options: tuple[Field, ...]
    text: str

    def check(self, key, value):
        if any(not option.check(key, value) for option in self.options):
            return []
        return [f"`{key}` = {value!r}: must be {self.text}"]

    def describe(self):
        return self.text


@dataclass
class MapOf(Field):
    """A mapping of names (lowercase letters, digits, `_`; they become file and DVC stage names) to ``item``s."""
    item: Field
    min_len: int = 1

    def check(self, key, value):
        if not isinstance(value, dict) or len(value) < self.min_len:
            return [f"`{key}` = {value!r}: must be a mapping of at least {self.min_len} name(s) to settings"]
        errors = []
        for name, item in value.items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                errors.append(f"`{key}.{name}`: bad name; use 1-32 lowercase letters, digits or `_`, starting with a "
                              f"letter (it names files and a DVC stage)")
                continue
            errors.extend(self.item.check(f"{key}.{name}", item))
        return errors


@dataclass
class Group(Field):
    fields: dict[str, Field]
    optional: frozenset[str] = field(default_factory=frozenset)

    def check(self, key, value):
        prefix = f"{key}." if key else ""
        if not isinstance(value, dict):
            return [f"`{key or 'params.yaml'}` = {value!r}: must be a mapping of keys to values"]
        errors = []
        for name in value:
            if not isinstance(name, str) or name not in self.fields:
                hint = difflib.get_close_matches(str(name), list(self.fields), n=1, cutoff=0.6)
                did_you_mean = f"; did you mean `{prefix}{hint[0]}`?" if hint else ""
                errors.append(f"`{prefix}{name}`: unknown key{did_you_mean} Allowed keys here: {', '.join(self.fields)}")
        for name, spec in self.fields.items():
            if name not in value:
                if name not in self.optional:
                    errors.append(f"`{prefix}{name}`: missing; add it ({spec.describe() or type(spec).__name__.lower()})")
                continue
            errors.extend(spec.check(prefix + name, value[name]))
        return errors


# --- the schema ---------------------------------------------------------------------------------
PROBABILITY = Float(0.0, 1.0)
EPS = Float(0.0, 1.0)


PRESET_WIDTH_ARCHS = ("papernot_cnn", "lenet", "resnet18", "mobilenetv2", "resnet50")  # width: a preset name only
WIDTH = AnyOf((Choice(WIDTHS), Int(1, 4096)), "a width preset (mnist | cifar) or an integer in [1, 4096]")

# The settings every trained role shares: given once in the `training` group, overridden per role.
TRAINING_FIELDS: dict[str, Field] = {
    "arch": Choice(ARCHS),
    "width": WIDTH,
    "depth": Nullable(Int(1, 1000)),  # the archs that take one; None: the arch's default
    "epochs": Int(1, 10_000),
    "batch_size": Int(1, 1 << 16),
    "optimizer": Choice(OPTIMIZERS),
    "lr": Float(0.0, 10.0, min_exclusive=True),
    "momentum": Float(0.0, 1.0),
    "weight_decay": Float(0.0, 1.0),
    "schedule": Choice(SCHEDULES),
    "augment": Bool(),
}
# The trained roles with a params group of their own; each one's settings are `training`, then its group's keys.
TRAINING_ROLES = ("teacher", "assistant", "student", "surrogate", "purifier_teachers", "purifier_student")


def role_group(extra: dict[str, Field] | None = None, required: tuple[str, ...] = ()) -> Group:
    """A trained role's group: any training field, to override `training`, plus the role's own keys (``extra``,
    required; an ``extra`` key that is also a training field is required only if named in ``required``)."""
    extra = extra or {}
    fields = {**TRAINING_FIELDS, **extra}
    optional = frozenset(k for k in TRAINING_FIELDS if k not in required)
    return Group(fields, optional=optional)


def purifier_group(extra: dict[str, Field]) -> Group:
    """A trained purifier (method purification): a purifier architecture and its size (required: the shared
    `training.arch` is a classifier), its own keys, and any training field to override `training`."""
    return role_group({"arch": Choice(PURIFIER_ARCHS), "width": Int(1, 4096), "depth": Int(1, 8), **extra},
                      required=("arch", "width", "depth"))


DARHT_TEACHER_OVERRIDES = ("epochs", "batch_size", "lr")  # a pool member may set these for itself

# One DARHT teacher: its architecture, size and training; optional keys override `darht.teacher_training`.
DARHT_TEACHER = Group(
    {
        "use": Bool(),
        "arch": Choice(ARCHS),
        "width": WIDTH,
        "depth": Nullable(Int(1, 1000)),
        "training": Choice(DARHT_TEACHER_TRAININGS),
        "seed": Int(0, 2**20),
        **{k: TRAINING_FIELDS[k] for k in DARHT_TEACHER_OVERRIDES},
    },
    optional=frozenset({"depth", *DARHT_TEACHER_OVERRIDES}),
)


MEMBER_MODEL_KEYS = ("arch", "width", "depth")  # a DARHT pool member's own model, never shared


def role_settings(params: dict, role: str) -> dict:
    """The settings of a trained role (one of TRAINING_ROLES): the shared `training` defaults, then the keys its own
    group sets. Every reader of a role's training settings uses this."""
    return {**params["training"], **params[role]}


def darht_teacher_settings(params: dict, name: str) -> dict:
    """The settings of DARHT teacher `darht.pool.<name>`: `training`, then `darht.teacher_training`, then the
    member's own overrides (epochs, batch_size, lr), its architecture and size (depth: null = the arch's default)."""
    member = params["darht"]["pool"][name]
    out = {**params["training"], **params["darht"]["teacher_training"]}
    out.update({k: member[k] for k in DARHT_TEACHER_OVERRIDES if k in member})
    out.update(arch=member["arch"], width=member["width"], depth=member.get("depth"))
    return out


def setting_key(params: dict, group: str, key: str) -> str:
    """The params.yaml key a role's setting comes from: `<group>.<key>` if the group sets it, else `training.<key>`
    (``group`` may be dotted, e.g. `darht.pool.vit`)."""
    node = params
    for part in group.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return f"{group}.{key}" if isinstance(node, dict) and key in node else f"training.{key}"


SCHEMA = Group(
    {
        "seed": Int(0, 2**31 - 1),
        "dataset": Choice(DATASET_NAMES),
        "method": Choice(METHOD_NAMES),
        "temperature": Float(0.0, 1e4, min_exclusive=True),
        "chain_length": Int(0, 20),
        "cuda_deterministic": Bool(),
        "engine": Group({"bf16": Bool(), "compile": Bool()}),
        "data": Group(
            {
                "raw_dir": Str(),
                "val_size": Int(1, 10_000_000),
                "download": Bool(),
                "train_subset": Nullable(Int(1)),
                "test_subset": Nullable(Int(1)),
                "loader": Choice(DATA_LOADERS),
                "workers": Int(0, 256),
                "image_size": Int(8, 4096),
                "resize_size": Int(8, 4096),
            }
        ),
        "training": Group(TRAINING_FIELDS),
        # epochs may be 0 for the teacher: with `init_from`, the file's weights are used as they are
        "teacher": role_group({"training": Choice(TEACHER_TRAININGS), "epochs": Int(0, 10_000),
                               "init_from": Nullable(Str())}, required=("training", "init_from")),
        "assistant": role_group({"kd_lambda": PROBABILITY}),
        "student": role_group({"kd_lambda": PROBABILITY}),
        "surrogate": role_group({"seed": Int(0, 2**31 - 1)}),
        "purifier_teachers": purifier_group({"noise_std": Float(0.0, 10.0)}),
        "purifier_student": purifier_group({
            "teachers": SubsetOf(PURIFIER_TEACHERS),
            "reconstruction_weight": Float(0.0, 1e4),
            "output_weight": Float(0.0, 1e4),
            "feature_weight": Float(0.0, 1e4),
            "adversarial_teacher_weight": PROBABILITY,
            "adversarial_fraction": PROBABILITY,
        }),
        "train_attack": Group(
            {
                "eps": Nullable(EPS),
                "steps": Int(0, 10_000),
                "step_size_ratio": Float(0.0, 10.0, min_exclusive=True),
                "mode": Choice(("eval", "train")),
                "bf16": Bool(),
            }
        ),
        "trades": Group({"beta": Float(0.0, 1e4)}),
        "darht": Group(
            {
                "pool": MapOf(DARHT_TEACHER),
                "teacher_training": Group({k: v for k, v in TRAINING_FIELDS.items() if k not in MEMBER_MODEL_KEYS},
                                          optional=frozenset(k for k in TRAINING_FIELDS if k not in MEMBER_MODEL_KEYS)),
                "kd_loss": Choice(DARHT_KD_LOSSES),
                "kd_temperature": Float(0.0, 1e4, min_exclusive=True),
                "adversarial_prob": PROBABILITY,
                "ce_kd_from": PROBABILITY,
                "kd_only_from": PROBABILITY,
                "normalize_weights": Bool(),
                "teacher_evaluation": Choice(TEACHER_EVALUATIONS),
                "select": Group(
                    {
                        "k": Nullable(Int(1, 1000)),
                        "n_points": Nullable(Int(1)),
                        "eps": Nullable(EPS),
                        "steps": Int(1, 100_000),
                        "step_size_ratio": Float(0.0, 10.0, min_exclusive=True),
                        "batch_size": Int(1, 1 << 16),
                        "seed": Int(0, 2**31 - 1),
                    }
                ),
            }
        ),
        "awp": Group({"enabled": Bool(), "gamma": Float(0.0, 1.0, min_exclusive=True), "warmup_epochs": Int(0, 10_000)}),
        "ard": Group({"kd_temperature": Float(0.0, 1e4, min_exclusive=True), "alpha": PROBABILITY}),
        "rslad": Group({"adv_weight": PROBABILITY}),
        "ltd": Group({"soft_label_temperature": Float(0.0, 1e4, min_exclusive=True),
                      "output_temperature": Float(0.0, 1e4, min_exclusive=True),
                      "beta": Float(0.0, 1e4)}),
        "attack": Group(
            {
                "n_points": Nullable(Int(1)),
                "batch_size": Int(1, 1 << 16),
                "seed": Int(0, 2**31 - 1),
                "cascade": Bool(),
                "eps": ListOf(EPS, unique=True),
                "headline_eps": EPS,
                "pgd": Group({"steps": Int(1, 100_000), "step_size_ratio": Float(0.0, 10.0, min_exclusive=True),
                              "restarts": Int(1, 1000)}),
                "pgd_l2": Group({"eps": ListOf(Float(0.0, 1e3), min_len=0, unique=True), "steps": Int(1, 100_000),
                                 "restarts": Int(1, 1000)}),
                "cw_l2": Group({"n_points": Int(0), "steps": Int(1, 100_000), "binary_search_steps": Int(1, 100),
                                "c_init": Float(0.0, 1e6, min_exclusive=True), "lr": Float(0.0, 10.0, min_exclusive=True)}),
                "autoattack": Group({"version": Choice(("standard", "custom")),
                                     "attacks": Nullable(ListOf(Choice(AUTOATTACK_ATTACKS), unique=True)),
                                     "eps": ListOf(EPS, min_len=0, unique=True),
                                     "apgd_restarts": Int(1, 100)}),
                "square": Group({"n_queries": Int(0, 1_000_000)}),
                "transfer": Group({"steps": Int(1, 100_000)}),
                "sensitivity_points": Int(1),
                "n_example_images": Int(0, 64),
            }
        ),
        "metrics": Group(
            {
                "masking": Group(
                    {
                        "strong_vs_ce_margin": PROBABILITY,
                        "transfer_margin": PROBABILITY,
                        "fgsm_margin": PROBABILITY,
                        "monotonic_tolerance": PROBABILITY,
                        "large_eps_max_acc": PROBABILITY,
                    }
                ),
            }
        ),
    }
)


def _cross_checks(p: dict) -> list[str]:
    """Combinations that pass field by field but cannot work together."""
    errors = []
    attack = p["attack"]
    if attack["headline_eps"] not in attack["eps"]:
        errors.append(f"`attack.headline_eps` = {attack['headline_eps']!r}: must be one of `attack.eps` = {attack['eps']}")
    aa = attack["autoattack"]
    for eps in aa["eps"]:
        if eps not in attack["eps"]:
            errors.append(f"`attack.autoattack.eps` contains {eps!r}: every AutoAttack ε must also be in `attack.eps` = {attack['eps']}")
    if attack["headline_eps"] not in aa["eps"]:
        errors.append(f"`attack.autoattack.eps` = {aa['eps']} lacks `attack.headline_eps` = {attack['headline_eps']!r}: "
                      f"the headline worst case must include AutoAttack; add it")
    if aa["version"] == "standard" and aa["attacks"] is not None:
        errors.append(f"`attack.autoattack.attacks` = {aa['attacks']}: the standard version fixes its own attacks "
                      f"(APGD-CE, APGD-T, FAB-T, Square); leave it empty, or set `attack.autoattack.version: custom`")
    if aa["version"] == "custom" and not aa["attacks"]:
        errors.append("`attack.autoattack.attacks` is empty: the custom version runs the listed attacks, e.g. "
                      "[apgd-ce, apgd-dlr] (src/presets/quick_autoattack.yaml); or set `attack.autoattack.version: standard`")
    student = p["purifier_student"]
    if not (student["reconstruction_weight"] or student["output_weight"] or student["feature_weight"]):
        errors.append("`purifier_student`: reconstruction_weight, output_weight and feature_weight are all 0, "
                      "so the student purifier would learn nothing; set at least one > 0")
    teacher = role_settings(p, "teacher")
    init_from = teacher["init_from"]
    if init_from is not None and not _under_pretrained(init_from):
        errors.append(f"`teacher.init_from` = {init_from!r}: must be a relative path to a file under "
                      f"{PRETRAINED_DIR}/ (that folder is a dep of the validate stage, so editing the file reruns the "
                      f"teacher); copy the checkpoint there (`dvc add {PRETRAINED_DIR}/<file>` to version it)")
    if teacher["epochs"] == 0 and init_from is None:
        errors.append(f"`{setting_key(p, 'teacher', 'epochs')}` = 0: trains nothing and there are no weights to start "
                      f"from; set epochs >= 1, or give `teacher.init_from` a checkpoint to use as it is")
    darht = p["darht"]
    if darht["ce_kd_from"] > darht["kd_only_from"]:
        errors.append(f"`darht.ce_kd_from` = {darht['ce_kd_from']!r} is after `darht.kd_only_from` = "
                      f"{darht['kd_only_from']!r}: the schedule is CE only, then CE + KD, then KD only; "
                      f"set ce_kd_from <= kd_only_from")
    models = {f"darht.pool.{name}": t for name, t in darht["pool"].items()}
    models.update({group: role_settings(p, group) for group in ("teacher", "assistant", "student", "surrogate")})
    for group, t in models.items():
        width_key = setting_key(p, group, "width") if group in p else f"{group}.width"
        depth_key = setting_key(p, group, "depth") if group in p else f"{group}.depth"
        if t["arch"] in PRESET_WIDTH_ARCHS and not isinstance(t["width"], str):
            errors.append(f"`{width_key}` = {t['width']!r}: arch {t['arch']} takes a width preset "
                          f"({' | '.join(WIDTHS)}); integer widths are for {', '.join(a for a in ARCHS if a not in PRESET_WIDTH_ARCHS)}")
        depth = t.get("depth")
        if t["arch"] == "wide_resnet" and depth is not None and (depth < 10 or (depth - 4) % 6):
            errors.append(f"`{depth_key}` = {depth!r}: a wide ResNet's depth is 6·n + 4 with n >= 1 blocks per stage "
                          f"(e.g. 16, 28, 34, 40)")
    data = p["data"]
    if data["loader"] == "memory" and p["dataset"] in STREAM_ONLY:
        errors.append(f"`data.loader` = memory: dataset {p['dataset']} does not fit in memory and has no in-memory "
                      f"path; set `data.loader: stream` (or auto)")
    if data["loader"] == "stream" and p["dataset"] not in STREAM_DATASETS:
        errors.append(f"`data.loader` = stream: dataset {p['dataset']} comes as binary batches, not image files; the "
                      f"stream path reads {', '.join(STREAM_DATASETS)}. Set `data.loader: auto` (or memory)")
    if data["resize_size"] < data["image_size"]:
        errors.append(f"`data.resize_size` = {data['resize_size']} is smaller than `data.image_size` = "
                      f"{data['image_size']}: evaluation resizes the shorter side to resize_size, then center-crops "
                      f"image_size")
    if p["method"] == "darht" and not any(t["use"] for t in darht["pool"].values()):
        errors.append(f"`darht.pool`: method darht needs at least one teacher with `use: true`; none of "
                      f"{', '.join(darht['pool'])} has it")
    errors.extend(_selection_checks(p))
    if p["data"]["test_subset"] is not None and attack["n_points"] is not None and attack["n_points"] > p["data"]["test_subset"]:
        errors.append(f"`attack.n_points` = {attack['n_points']}: larger than `data.test_subset` = {p['data']['test_subset']}")
    return errors


MAX_SELECTION_SUBSETS = 1_000_000  # darht.select scores every K-subset of the candidates


def _selection_checks(p: dict) -> list[str]:
    """`darht.select.k` against the pool (method darht only: other methods ignore `darht.select`)."""
    k = p["darht"]["select"]["k"]
    if p["method"] != "darht" or k is None:
        return []
    candidates = [name for name, t in p["darht"]["pool"].items() if t["use"]]
    if k > len(candidates):
        return [f"`darht.select.k` = {k}: larger than the pool of {len(candidates)} candidate(s) (the `use: true` "
                f"entries of `darht.pool`: {', '.join(candidates)}); lower k to at most {len(candidates)}, add "
                f"candidates, or set k to null (no selection: every `use: true` entry is a teacher)"]
    n_points, val_size = p["darht"]["select"]["n_points"], p["data"]["val_size"]
    if n_points is not None and n_points > val_size:
        return [f"`darht.select.n_points` = {n_points}: larger than the validation split (`data.val_size` = "
                f"{val_size}); lower it or set it to null (the whole validation split)"]
    if math.comb(len(candidates), k) > MAX_SELECTION_SUBSETS:
        return [f"`darht.select.k` = {k}: {math.comb(len(candidates), k)} subsets of the {len(candidates)} "
                f"candidates to score, more than the exhaustive search's limit of {MAX_SELECTION_SUBSETS}; "
                f"use fewer candidates or a k further from half the pool"]
    return []


def _under_pretrained(path: str) -> bool:
    """A relative path inside PRETRAINED_DIR (no `..` climbing out), naming a file rather than the folder."""
    parts = Path(path).parts
    return (not Path(path).is_absolute() and len(parts) >= 2 and parts[0] == PRETRAINED_DIR
            and ".." not in parts)


def validate(params: Any) -> dict:
    """Return ``params`` unchanged if valid, else raise ParamsError listing every problem."""
    errors = SCHEMA.check("", params)
    if not errors:
        errors = _cross_checks(params)
    if errors:
        raise ParamsError("params.yaml is not valid:\n  - " + "\n  - ".join(errors))
    return params


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 (core schema) scalars, as DVC (ruamel.yaml) reads params.yaml.

    PyYAML implements YAML 1.1, which differs where it matters for params: `3e-3` (no dot) is a string in 1.1 and a
    float in 1.2; `yes`/`no`/`on`/`off` are booleans in 1.1 and strings in 1.2; `010` is octal 8 in 1.1 and 10 in
    1.2; `1:30` is sexagesimal 90 in 1.1 and a string in 1.2. The stages must see what DVC sees (DVC decides what
    changed from its own reading), so every reader of params.yaml uses this loader.
    """


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12 = {
    "tag:yaml.org,2002:bool": (r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    "tag:yaml.org,2002:int": (r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    "tag:yaml.org,2002:float": (r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", "-+.0123456789"),
}
for _tag, (_rx, _first) in _YAML12.items():
    Yaml12Loader.add_implicit_resolver(_tag, re.compile(_rx), list(_first))


def _construct_int12(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    value = loader.construct_scalar(node)
    if value.startswith("0o"):
        return int(value[2:], 8)
    if value.startswith("0x"):
        return int(value[2:], 16)
    return int(value, 10)


def _construct_float12(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    value = loader.construct_scalar(node)
    lowered = value.lower()
    if lowered.endswith(".inf"):
        return -math.inf if value.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    return float(value)


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int12)
Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float12)


def read_yaml(text: str):
    """Parse YAML text as YAML 1.2 (:class:`Yaml12Loader`), the way DVC reads params.yaml."""
    return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found. Run the stage from the repository root, where params.yaml lives.")
    try:
        params = read_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return validate(params)

