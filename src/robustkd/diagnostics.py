"""Per-model metrics (fixed schema) and the gradient-masking diagnostics of Carlini et al. 2019.

Input: one ``results/attack/<model>.json`` from :func:`robustkd.evaluation.evaluate`.
Output: a flat-keyed dict for metrics.json (numbers and short labels: the masking checks that fired as short
codes) and, for results/gradient_masking.md, the masking reasons in words.
"""
from __future__ import annotations

import statistics

from .stats import wilson
from .suite import AUTOATTACK, FGSM_CE, PAPER_PROTOCOL, PGD_CE, PGD_MARGIN, WHITE_BOX, eps_key, is_black_box

STRONG = (PGD_MARGIN, AUTOATTACK)


def _acc(points: list[int]) -> float:
    return round(sum(points) / len(points), 4) if points else 0.0


def _ci(name: str, points: list[int]) -> dict:
    """``<name>_ci_low``, ``<name>_ci_high``: the 95% Wilson interval of the accuracy over ``points`` (None, None
    when there are none)."""
    low, high = wilson(sum(points), len(points)) if points else (None, None)
    return {f"{name}_ci_low": low, f"{name}_ci_high": high}


def worst_case_points(linf: dict[str, dict[str, list[int]]], key: str, among=None) -> list[int]:
    """Per point: robust only if every attack run at this ε (or every one ``among`` them) failed on it."""
    lists = [per_eps[key] for a, per_eps in linf.items() if key in per_eps and (among is None or a in among)]
    return [int(all(vals)) for vals in zip(*lists)]


def purification_summary(result: dict, headline: str) -> dict:
    """The purification numbers (None for models of other methods): worst case under the paper's protocol
    (crafted on the classifier, then purified) and under adaptive white-box attacks (through the purifier),
    CW-L2 examples of the classifier after purification, and PSNR / SSIM of purified images."""
    linf, protocol = result["linf"], result.get("paper_protocol")
    purifier = result["info"].get("purifier")
    keys = ("paper_protocol_headline", "paper_protocol_cw_acc", "psnr_clean", "ssim_clean", "psnr_adversarial",
            "ssim_adversarial")
    adaptive = worst_case_points(linf, headline, WHITE_BOX)
    out = {"purifier": purifier["arch"] if purifier else None, "adaptive_headline": _acc(adaptive),
           **_ci("adaptive_headline", adaptive), **dict.fromkeys(keys),
           **dict.fromkeys(("paper_protocol_headline_ci_low", "paper_protocol_headline_ci_high"))}
    if protocol:
        quality = protocol["image_quality"]
        paper = worst_case_points(linf, headline, PAPER_PROTOCOL)
        out.update(_ci("paper_protocol_headline", paper))
        out.update(paper_protocol_headline=_acc(paper),
                   paper_protocol_cw_acc=_acc(protocol["cw_l2"]) if protocol["cw_l2"] else None,
                   psnr_clean=quality["clean"]["psnr_mean"], ssim_clean=quality["clean"]["ssim_mean"],
                   psnr_adversarial=quality["adversarial"]["psnr_mean"],
                   ssim_adversarial=quality["adversarial"]["ssim_mean"])
    return out


def cw_summary(result: dict) -> dict:
    """Minimal L2 over the points that are correctly classified clean; failures count as infinite."""
    norms = result["cw_l2"]["l2"]
    correct = result["attacked_clean_correct"][: len(norms)]
    found = [n for n, c in zip(norms, correct) if c and n is not None]
    attempted = sum(correct[: len(norms)])
    if not attempted:
        return {"cw_l2_median": None, "cw_l2_mean": None, "cw_l2_success_rate": None}
    padded = sorted(found) + [float("inf")] * (attempted - len(found))
    median = statistics.median(padded)
    return {
        "cw_l2_median": round(median, 4) if median != float("inf") else None,
        "cw_l2_mean": round(sum(found) / len(found), 4) if found else None,
        "cw_l2_success_rate": round(len(found) / attempted, 4),
    }


# Short codes of the masking checks (metrics.json `masking_codes`); the reasons in words go to the masking report.
CE_GAP = "ce_gap"                  # a strong attack beats softmax-CE PGD
BLACK_BOX = "black_box"            # a black box breaks points every white-box attack left robust
FGSM_BEATS_PGD = "fgsm_beats_pgd"
NOT_MONOTONE = "not_monotone"      # robust accuracy rises with ε
LARGE_EPS = "large_eps"            # worst case still high at the largest ε
AUTOATTACK_CHECK = "autoattack_check"
MASKING_CODES = (CE_GAP, BLACK_BOX, FGSM_BEATS_PGD, NOT_MONOTONE, LARGE_EPS, AUTOATTACK_CHECK)


def masking_reasons(result: dict, thresholds: dict) -> list[str]:
    """Every masking check that fired, in words (empty: not flagged)."""
    return [text for _, text in masking_checks(result, thresholds)]


def masking_codes(result: dict, thresholds: dict) -> str:
    """The checks that fired as short codes, each once, in :data:`MASKING_CODES` order, comma-separated."""
    fired = {code for code, _ in masking_checks(result, thresholds)}
    return ",".join(c for c in MASKING_CODES if c in fired)


def masking_checks(result: dict, thresholds: dict) -> list[tuple[str, str]]:
    """(code, reason in words) for every masking check that fired."""
    linf = result["linf"]
    eps_list = sorted(result["eps"])
    acc = {a: {k: _acc(v) for k, v in per_eps.items()} for a, per_eps in linf.items()}
    reasons: list[tuple[str, str]] = []
    fire = lambda code, text: reasons.append((code, text))  # noqa: E731
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    for eps in eps_list:
        key = eps_key(eps)
        ce = acc.get(PGD_CE, {}).get(key)
        strong = {a: acc[a][key] for a in STRONG if key in acc.get(a, {})}
        if ce is not None and strong:
            best = min(strong, key=strong.get)
            if ce - strong[best] > thresholds["strong_vs_ce_margin"]:
                fire(CE_GAP, f"ε={eps:g}: {best} leaves {pct(strong[best])} but softmax-CE PGD leaves {pct(ce)}; "
                               f"a {100 * (ce - strong[best]):.1f}-point gap (> {100 * thresholds['strong_vs_ce_margin']:.0f}) "
                               f"means the softmax-CE gradient is masked (saturated softmax)")
        # Per point: a black box must not break a point that every white-box attack left standing. (The same with
        # and without the cascade, which gives Square only those points.)
        white = [a for a in WHITE_BOX if key in linf.get(a, {})]
        black = [a for a in linf if is_black_box(a, result["model"]) and key in linf[a]]
        standing = worst_case_points(linf, key, white) if white else []
        if black and sum(standing):
            # the share of the points every white-box attack left robust (not of all attacked points)
            beyond = {a: sum(s and not b for s, b in zip(standing, linf[a][key])) / sum(standing) for a in black}
            bb = max(beyond, key=beyond.get)
            if beyond[bb] > thresholds["transfer_margin"]:
                fire(BLACK_BOX, f"ε={eps:g}: black-box {bb} breaks {pct(beyond[bb])} of the points that every "
                               f"white-box attack ({', '.join(white)}) left robust ({pct(_acc(standing))})")
        fgsm, pgd = acc.get(FGSM_CE, {}).get(key), acc.get(PGD_CE, {}).get(key)
        if fgsm is not None and pgd is not None and pgd - fgsm > thresholds["fgsm_margin"]:
            fire(FGSM_BEATS_PGD, f"ε={eps:g}: single-step FGSM ({pct(fgsm)}) beats iterative PGD ({pct(pgd)}) with the same loss")
    for attack, per_eps in acc.items():
        curve = [(e, per_eps[eps_key(e)]) for e in eps_list if eps_key(e) in per_eps]
        for (e0, a0), (e1, a1) in zip(curve, curve[1:]):
            if a1 - a0 > thresholds["monotonic_tolerance"]:
                fire(NOT_MONOTONE, f"{attack}: robust accuracy rises from {pct(a0)} at ε={e0:g} to {pct(a1)} at ε={e1:g}")
    largest = eps_list[-1]
    worst_large = _acc(worst_case_points(linf, eps_key(largest)))
    if worst_large > thresholds["large_eps_max_acc"]:
        fire(LARGE_EPS, f"worst-case accuracy is still {pct(worst_large)} at the largest ε={largest:g} "
                       f"(expected about 0, <= {pct(thresholds['large_eps_max_acc'])})")
    for eps in eps_list:
        for flag in result["autoattack_flags"].get(eps_key(eps), []):
            fire(AUTOATTACK_CHECK, f"AutoAttack's own check at ε={eps:g}: {flag}")
    return reasons


def summarise(result: dict, thresholds: dict) -> dict:
    """The fixed per-model metrics schema (docs/evaluation.md, "Metrics schema")."""
    linf, headline = result["linf"], eps_key(result["headline_eps"])
    worst = {eps_key(e): _acc(worst_case_points(linf, eps_key(e))) for e in sorted(result["eps"])}
    codes = masking_codes(result, thresholds)
    info = result["info"]
    n, n_test = result["n_attacked"], result["n_test"]
    aa_points = linf[AUTOATTACK][headline] if headline in linf.get(AUTOATTACK, {}) else None
    clean_ci = wilson(result["clean_correct"], n_test)
    worst_ci = wilson(sum(worst_case_points(linf, headline)), n)
    aa_ci = wilson(sum(aa_points), len(aa_points)) if aa_points else (None, None)
    return {
        "role": info["role"],
        "arch": info["arch"],
        "method": info["method"],
        "train_temperature": info["temperature"],
        "train_precision": info.get("train_precision"),  # bf16-autocast | fp32; null: a checkpoint older than the field
        # Adversarial weight perturbation (robustkd.awp): 1 = trained with it, with its γ and warm-up epochs; 0 and nulls
        # for a model trained without it (or written before AWP existed).
        "awp": int(bool(info.get("awp"))),
        "awp_gamma": (info.get("awp") or {}).get("gamma"),
        "awp_warmup_epochs": (info.get("awp") or {}).get("warmup_epochs"),
        "n_test": result["n_test"],
        "n_attacked": result["n_attacked"],
        "autoattack_version": result.get("autoattack_version"),  # standard | custom (the quick subset; labelled so)
        "clean_acc": round(result["clean_correct"] / result["n_test"], 4),
        # 95% Wilson intervals (robustkd.stats): clean over the n_test points, the others over the n_attacked ones.
        "clean_acc_ci_low": clean_ci[0], "clean_acc_ci_high": clean_ci[1],
        "robust_acc": {attack: {k: _acc(v) for k, v in per_eps.items()} for attack, per_eps in linf.items()},
        # each attack's 95% Wilson interval at the headline ε (over the n_attacked points), per attack
        "robust_acc_headline_ci_low": {a: wilson(sum(v[headline]), len(v[headline]))[0]
                                       for a, v in linf.items() if v.get(headline)},
        "robust_acc_headline_ci_high": {a: wilson(sum(v[headline]), len(v[headline]))[1]
                                        for a, v in linf.items() if v.get(headline)},
        "robust_acc_l2": {attack: {k: _acc(v) for k, v in per_eps.items()} for attack, per_eps in result["l2"].items()},
        "worst_case": worst,
        "worst_case_headline": worst[headline],
        "worst_case_headline_ci_low": worst_ci[0], "worst_case_headline_ci_high": worst_ci[1],
        "autoattack_headline": _acc(aa_points) if aa_points is not None else None,
        "autoattack_headline_ci_low": aa_ci[0], "autoattack_headline_ci_high": aa_ci[1],
        **cw_summary(result),
        # 6 significant digits: a distilled model's softmax sensitivity can be ~1e-20.
        "sensitivity_softmax": float(f"{result['sensitivity']['softmax']:.6g}"),
        "sensitivity_logit": float(f"{result['sensitivity']['logit']:.6g}"),
        "gradient_masking": int(bool(codes)),  # 1 = flagged; the reasons in words: results/gradient_masking.md
        "masking_codes": codes,                # the checks that fired (MASKING_CODES), e.g. "ce_gap,large_eps"
        **purification_summary(result, headline),
        # method darht with darht.select.k: the candidates, the validation matrix, the chosen set and its score, as
        # the student's checkpoint recorded them from results/darht_select.json (null otherwise)
        "darht_selection": info.get("darht_selection"),
    }


def transferability(results: list[dict]) -> dict:
    """The DARHT transferability matrix at the headline ε, from the per-point results of the attack stage.

    success_rate[source][target] = among the attacked points that ``target`` classifies correctly when clean, the
    fraction misclassified by the examples crafted on ``source`` (margin PGD, last iterate, ``transfer_<source>``).
    Points the target already gets wrong are not counted: they say nothing about transfer. Sources and the K x K
    targets are the DARHT teachers (the diagonal is each teacher's own, white-box, success rate);
    ``success_rate_on_student`` is the black-box transfer from each teacher to the student. With ``darht.select.k``
    the teachers are every candidate, and ``chosen`` lists those the student learnt from (chosen on the validation
    split by the stage darht_select; this test-split matrix is a report, never used to choose).
    """
    teachers = [r["model"] for r in results if r["info"].get("darht_teacher")]
    if not teachers:
        return {"teachers": []}  # not method darht
    headline = eps_key(results[0]["headline_eps"])
    by_name = {r["model"]: r for r in results}

    def rate(source: str, target: str) -> tuple[float | None, int]:
        r = by_name[target]
        fooled = r["linf"][f"transfer_{source}"][headline]
        correct = r["attacked_clean_correct"]
        n = sum(correct)
        hits = sum(1 for c, robust in zip(correct, fooled) if c and not robust)
        return (round(hits / n, 4) if n else None), n

    matrix = {s: {t: rate(s, t)[0] for t in teachers} for s in teachers}
    off = [v for s in teachers for t in teachers if s != t and (v := matrix[s][t]) is not None]
    out = {"teachers": teachers, "eps": results[0]["headline_eps"], "success_rate": matrix,
           "n_clean_correct": {t: rate(teachers[0], t)[1] for t in teachers},
           "mean_off_diagonal": round(sum(off) / len(off), 4) if off else None}  # the definition: this docstring
    if "student" in by_name:
        out["success_rate_on_student"] = {s: rate(s, "student")[0] for s in teachers}
        out["n_clean_correct"]["student"] = rate(teachers[0], "student")[1]
        selection = by_name["student"]["info"].get("darht_selection")
        if selection:  # darht.select.k: every candidate is evaluated here; the student learnt from these
            out["chosen"] = [f"darht_{name}" for name in selection["chosen"]]
    return out
