"""Stage `attack`: run the attack suite on every model of the chain; per-point results -> results/attack/.

Clean accuracy comes from the predict stage (results/predict/), which an attack-only change does not rerun.

The models, and how each is treated, come from the training stages' manifests (robustkd.manifest), not from method
code: when a model purifies for a classifier (method purification), every model is also given the paper's protocol,
examples crafted on that classifier alone; PGD examples crafted on each transfer source (method darht's teachers) are
replayed on every model (`transfer_<source>`: black-box transfer to the student, and the transferability matrix); a
model whose entry names a `suite_param` (`darht.teacher_evaluation`) gets the reduced suite when that param says so.
Also draws plots/adversarial_examples.png: clean vs adversarial images with each model's prediction, or, with
purifiers, the adversarial images before and after each purifier.
"""
import shutil
from pathlib import Path

import torch

from robustkd import attacks, data, evaluation, manifest, plotting, splits, stage
from robustkd.errors import ParamsError
from robustkd.inference import load_clean_correct
from robustkd.io import atomic_write_json
from robustkd.paths import ATTACK_RESULTS_DIR, PREPARED_DIR, SURROGATE_PATH
from robustkd.roles import load_model
from robustkd.training import pick_device


def reduced_suite(cfg: dict) -> dict:
    """The attack settings of a model whose `suite_param` says reduced: FGSM, both PGDs and the transfer attacks at
    every ε; no AutoAttack, Square, PGD-L2 or CW-L2 (the student gets all of them)."""
    return {**cfg, "autoattack": {**cfg["autoattack"], "eps": []}, "square": {**cfg["square"], "n_queries": 0},
            "pgd_l2": {**cfg["pgd_l2"], "eps": []}, "cw_l2": {**cfg["cw_l2"], "n_points": 0}}


def suite_of(evaluated: dict, params: dict) -> str:
    """"full", or what the params key named by the manifest entry's `suite_param` says (full | reduced)."""
    if "suite_param" not in evaluated:
        return "full"
    value = params
    for key in evaluated["suite_param"].split("."):
        value = value[key]
    return value


def craft_on_sources(paths: dict[str, Path], x, y, cfg: dict) -> dict[str, dict]:
    """{`transfer_<source>`: {eps key: x_adv}}: margin PGD (last iterate, `attack.transfer.steps`) on each source."""
    out = {}
    for name, path in paths.items():
        teacher, _ = load_model(path)
        with attacks.frozen(teacher):
            out[f"transfer_{name}"] = evaluation.craft_transfer(teacher, x, y, cfg)
    return out


def purification_examples(classifier, models: dict, x, y, cfg: dict, class_names: list[str]) -> None:
    """Rows: clean, PGD crafted on the classifier (the paper's protocol), then that image after each purifier;
    every image with the classifier's prediction."""
    eps = cfg["headline_eps"]
    x_adv = attacks.transfer(classifier, x, y, eps=eps, steps=cfg["pgd"]["steps"],
                             step_size=cfg["pgd"]["step_size_ratio"] * eps, loss="ce",
                             generator=torch.Generator().manual_seed(cfg["seed"]))
    n = len(x)
    rows = {"clean": (x, evaluation.predict(classifier, x, n)),
            "adversarial": (x_adv, evaluation.predict(classifier, x_adv, n))}
    for name, model in models.items():
        purified = evaluation.purify(model, x_adv, n)
        rows[f"purified: {name}"] = (purified, evaluation.predict(classifier, purified, n))
    plotting.purification_grid(x.cpu(), y.cpu(), {k: (a.cpu(), b.cpu()) for k, (a, b) in rows.items()},
                               class_names, f"PGD-CE crafted on the classifier at ε={eps:g}, then purified "
                               f"(title: classifier's prediction, red = wrong)", Path("plots/adversarial_examples.png"))


def main(params: dict) -> None:
    cfg = params["attack"]
    meta = data.load_meta(PREPARED_DIR)
    device = pick_device()
    test = splits.open_split(PREPARED_DIR, "test", params["data"]["workers"]).to(device)
    n_test = len(test)
    n_points = n_test if cfg["n_points"] is None else cfg["n_points"]
    if n_points > n_test:
        raise ParamsError(f"`attack.n_points` = {n_points}: the prepared test set has only {n_test} images; "
                          f"lower it or set it to null (whole test set)")
    y_test = test.labels
    # A seeded subset, stated in the results; the same points for every model and attack.
    attack_idx = torch.randperm(n_test, generator=torch.Generator().manual_seed(cfg["seed"]))[:n_points].sort().values
    attack_idx = attack_idx.to(device)
    # The attacked images only (a streamed test set is never held whole); clean accuracy over the whole test set
    # comes from the predict stage.
    x_att, y_att = test.take(attack_idx), y_test[attack_idx]
    surrogate, _ = load_model(SURROGATE_PATH)
    with attacks.frozen(surrogate):
        transfer_adv = evaluation.craft_transfer(surrogate, x_att, y_att, cfg)

    models = manifest.evaluated_models()
    paths = {name: Path(evaluated["checkpoint"]) for name, evaluated in models.items()}
    sources = {name: paths[name] for name, evaluated in models.items() if evaluated.get("transfer_source")}
    from_sources = craft_on_sources(sources, x_att, y_att, cfg)
    classifiers = {evaluated["classifier"] for evaluated in models.values() if "classifier" in evaluated}
    on_classifier, purified = None, {}  # purified: the models with a purifier, for the picture
    if classifiers:  # the paper's protocol, crafted once on the bare classifier
        (classifier_name,) = classifiers
        classifier, _ = load_model(paths[classifier_name])
        with attacks.frozen(classifier):
            on_classifier = evaluation.craft_on_classifier(classifier, x_att, y_att, cfg)

    shutil.rmtree(ATTACK_RESULTS_DIR, ignore_errors=True)
    examples = {}
    n_ex = cfg["n_example_images"]
    for name, path in paths.items():
        model, info = load_model(path)
        if hasattr(model, "purifier"):
            purified[name] = model
        reduced = suite_of(models[name], params) == "reduced"
        clean_correct = load_clean_correct(name, path, splits.split_digest(meta, "test"), y_test)
        with attacks.frozen(model):
            result = evaluation.evaluate(model, name, None, y_test, attack_idx, reduced_suite(cfg) if reduced else cfg,
                                         transfer_adv, on_classifier, extra_transfer=from_sources,
                                         clean_correct=clean_correct, x_attacked=x_att)
            if n_ex and on_classifier is None:
                xe, ye = x_att[:n_ex], y_att[:n_ex]
                eps = cfg["headline_eps"]
                x_adv = attacks.pgd(model, xe, ye, eps=eps, steps=cfg["pgd"]["steps"],
                                    step_size=cfg["pgd"]["step_size_ratio"] * eps, loss="margin",
                                    generator=torch.Generator().manual_seed(cfg["seed"]))
                examples[name] = (x_adv.cpu(), evaluation.predict(model, x_adv, n_ex).cpu(),
                                  evaluation.predict(model, xe, n_ex).cpu())
        result.update(info=info, attack_points=attack_idx.tolist(), eps=cfg["eps"], headline_eps=cfg["headline_eps"],
                      suite="reduced" if reduced else "full",
                      autoattack_version=cfg["autoattack"]["version"], autoattack_attacks=cfg["autoattack"]["attacks"])
        atomic_write_json(ATTACK_RESULTS_DIR / f"{name}.json", result)
        print(f"[attack] {name}: clean {result['clean_correct'] / result['n_test']:.4f}")
    atomic_write_json(ATTACK_RESULTS_DIR / "index.json", {"models": list(paths)})
    if n_ex and on_classifier is not None:
        with attacks.frozen(classifier):
            purification_examples(classifier, purified, x_att[:n_ex], y_att[:n_ex], cfg, meta["class_names"])
    elif n_ex:
        plotting.adversarial_grid(x_att[:n_ex].cpu(), y_att[:n_ex].cpu(), examples,
                                  meta["class_names"], cfg["headline_eps"], Path("plots/adversarial_examples.png"))


if __name__ == "__main__":
    stage.run(main, torchrun=True)
