"""The study's report: OUT/report.md (the tables a person reads in a minute), OUT/report.json (every per-seed
number, the configuration, versions and git commit) and PNG plots (loss curves, accuracies with their
intervals, forgetting, MIR per layer)."""
from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

from llava_dpa.study.arms import ARMS, BASELINE, PERCEIVERS
from llava_dpa.study.stats import LEVEL, paired, summary, t_quantile
from llava_dpa.study.world import HELD_OUT, QUESTION_TYPES

TAU, EPSILON = "1e-05", "0.5"


def _sum(*values):
    return None if any(v is None for v in values) else sum(values)


#: (key, label, value of one arm in one seed, higher is better: True / False / None for a cost)
METRICS = (
    ("iid", "i.i.d. accuracy (%)", lambda m: m["vqa"]["test_iid"], True),
    ("comp", "compositional accuracy (%)", lambda m: m["vqa"]["test_comp"], True),
    ("text_after", "text accuracy after (%)", lambda m: m["text"]["accuracy"], True),
    ("forgetting", "forgetting (points)", lambda m: m["forgetting"]["forgetting"], False),
    ("mir", "MIR of the target", lambda m: m["mir"]["mir"], False),
    ("density", f"update density (tau={float(TAU):g})", lambda m: m["updates"]["density"][TAU], False),
    ("intrusion", f"intrusion dimension (eps={EPSILON})", lambda m: m["updates"]["intrusion"][EPSILON], False),
    ("train_s", "training steps' time, both stages (s)",
     lambda m: _sum(m["stages"]["1"]["train_runtime"], m["stages"]["2"]["train_runtime"]), None),
    ("cpu_s", "training processes' CPU time, both stages (s)",
     lambda m: _sum(m["stages"]["1"]["cpu"], m["stages"]["2"]["cpu"]), None),
)
TYPE_METRICS = tuple((f"{split}.{t}", f"{label} {t} (%)", (lambda m, s=split, t=t: m["vqa"][f"{s}.by_type"][t]), True)
                     for split, label in (("test_iid", "i.i.d."), ("test_comp", "compositional"))
                     for t in QUESTION_TYPES)


def per_seed(seeds: dict, arm: str, getter) -> list:
    return [getter(seeds[s]["arms"][arm]) for s in sorted(seeds, key=int)]


def _git_commit() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "llava_dpa"],
                               capture_output=True, text=True).stdout.strip()
        return {"commit": commit, "llava_dpa_modified": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "llava_dpa_modified": None}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("torch", "transformers", "llava-torch", "llava-dpa", "scipy", "matplotlib"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def build(config, world_facts: dict, seeds: dict, parts: dict, command: list[str], elapsed: float) -> dict:
    """report.json's content: the inputs, every per-seed number, and the summaries and paired comparisons."""
    summaries, comparisons = {}, {}
    for key, label, getter, better in METRICS + TYPE_METRICS:
        summaries[key] = {a.name: summary(per_seed(seeds, a.name, getter)) for a in ARMS}
        base = per_seed(seeds, BASELINE.name, getter)
        comparisons[key] = {a.name: paired(per_seed(seeds, a.name, getter), base, better)
                            for a in ARMS if a is not BASELINE}
    reduction = {a.name: summary([seeds[s]["arms"][a.name]["forgetting"]["reduction_points"] for s in seeds])
                 for a in ARMS if a is not BASELINE}
    perceiver = {k: summary([seeds[s]["perceivers"]["perceiver"]["vqa"][k] for s in seeds])
                 for k in ("test_iid", "test_comp")}
    return {"command": command, "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "elapsed_seconds": elapsed,
            "git": _git_commit(), "versions": versions(), "configuration": config.as_dict(),
            "world": world_facts, "parts": parts, "arms": [a.__dict__ for a in ARMS], "held_out_combinations": HELD_OUT,
            "seeds": seeds, "summaries": summaries, "comparisons": comparisons, "forgetting_reduction": reduction,
            "perceiver_standalone": perceiver, "metrics": {k: {"label": lab, "higher_is_better": b}
                                                           for k, lab, _, b in METRICS + TYPE_METRICS}}


# ---- markdown -------------------------------------------------------------------------------------------------
def _ms(s: dict, digits: int = 1) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['sd']:.{digits}f}" if s["sd"] is not None else "")


def _digits(key: str) -> int:
    return 3 if key in ("mir", "density") else (0 if key in ("train_s", "cpu_s") else 1)


def _interval(c: dict, digits: int) -> str:
    if c["low"] is None:
        return "-"
    return f"[{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"


def markdown(report: dict) -> str:
    seeds, S, C = report["seeds"], report["summaries"], report["comparisons"]
    n = len(seeds)
    world, parts = report["world"], report["parts"]
    lines = ["# DPA in miniature: the study's report", "",
             f"Command: `{' '.join(report['command'])}`  ",
             f"{n} seed(s) ({', '.join(sorted(seeds, key=int))}), {len(ARMS)} arms; finished {report['created']} after "
             f"{report['elapsed_seconds'] / 60:.1f} min; commit {report['git']['commit']}"
             + (" (llava_dpa modified)" if report["git"]["llava_dpa_modified"] else "") + ".  ",
             f"Figures are mean ± standard deviation over seeds; a difference from the baseline is the mean of the "
             f"per-seed differences with its {LEVEL:.0%} interval (Student t, paired by seed); an interval that "
             f"covers zero reads \"no difference\". Design and reasons: docs/study.md.", ""]
    lines += ["## The arms", "", "| arm | registry entry | the paper's row | differs from the baseline by |", "|---|---|---|---|"]
    lines += [f"| {a['name']} | `{a['entry']}` | {a['paper_row']} | {a['differs_by']} |" for a in report["arms"]]
    chance_iid, chance_comp = world["chance_test_iid"]["overall"], world["chance_test_comp"]["overall"]
    lines += ["", "## Before multimodal training", "",
              f"- target's text accuracy: {parts['text_before']['accuracy']:.1f}% "
              f"({', '.join(f'{k} {v:.1f}%' for k, v in parts['text_before']['by_type'].items())}; "
              f"{world['counts']['text']} questions, chance {100 * world['chance_text']['overall']:.1f}%)",
              "- ViT held-out attribute accuracy: "
              + (", ".join(f"{k} {100 * v:.1f}%" for k, v in parts["vit"]["held_out_accuracy"].items())
                 if parts.get("vit") else "given, not pretrained here"),
              f"- LM pretraining final loss: target {parts['target_loss']}, perceiver LM {parts['perceiver_lm_loss']}",
              f"- chance (each type's most frequent answer): i.i.d. {100 * chance_iid:.1f}%, compositional "
              f"{100 * chance_comp:.1f}%", ""]
    main = [k for k, *_ in METRICS]
    labels = {k: lab for k, lab, *_ in METRICS + TYPE_METRICS}
    lines += ["## Results per arm", "", "| arm | " + " | ".join(labels[k] for k in main) + " |",
              "|---|" + "---|" * len(main)]
    for a in ARMS:
        lines.append(f"| {a.name} | " + " | ".join(_ms(S[k][a.name], _digits(k)) for k in main) + " |")
    p = report["perceiver_standalone"]
    lines += ["", f"The standalone perceiver VLM (Table 2's trained perceiver): i.i.d. {_ms(p['test_iid'])}%, "
                  f"compositional {_ms(p['test_comp'])}%.", ""]
    lines += ["## Differences from the baseline", "",
              "| arm | measure | difference | 95% interval | verdict |", "|---|---|---|---|---|"]
    for a in ARMS:
        if a is BASELINE:
            continue
        for k in main:
            c = C[k][a.name]
            d = _digits(k) if k not in ("mir", "density") else 4
            mean = "-" if c["mean"] is None else f"{c['mean']:+.{d}f}"
            lines.append(f"| {a.name} | {labels[k]} | {mean} | {_interval(c, d)} | {c['verdict']} |")
    lines += ["", "## Accuracy per question type", ""]
    for split, name in (("test_iid", "i.i.d."), ("test_comp", f"compositional (held-out {', '.join(' '.join(h) for h in HELD_OUT)})")):
        lines += [f"{name}:", "", "| arm | " + " | ".join(QUESTION_TYPES) + " |", "|---|" + "---|" * len(QUESTION_TYPES)]
        for a in ARMS:
            lines.append(f"| {a.name} | " + " | ".join(_ms(S[f"{split}.{t}"][a.name]) for t in QUESTION_TYPES) + " |")
        lines.append("| chance | " + " | ".join(f"{100 * world[f'chance_{split}']['per_type'][t]:.1f}"
                                               for t in QUESTION_TYPES) + " |")
        lines.append("")
    lines += ["## Forgetting (Table 1's computation)", "",
              f"F = the target's text accuracy before ({parts['text_before']['accuracy']:.1f}%) minus after, both printed "
              "to one decimal; the reduction is F(baseline) - F(arm), per seed.", "",
              "| arm | text after (%) | F (points) | reduction vs baseline (points) |", "|---|---|---|---|"]
    red = report["forgetting_reduction"]
    for a in ARMS:
        r = red.get(a.name)
        lines.append(f"| {a.name} | {_ms(S['text_after'][a.name])} | {_ms(S['forgetting'][a.name])} | "
                     + ("-" if r is None else _ms(r)) + " |")
    lines += ["", "## MIR per layer (Figures 3 and 5)", "",
              "Fréchet distance between visual and text tokens per layer (mean over seeds; lower: closer); MIR = "
              "log10 of the sum. Targets of the arms; the standalone perceivers (their LM is the perceiver LM: "
              "Figure 3); the perceiver inside each DPA arm after its training.", ""]
    for name, fds, mir in mir_rows(seeds):
        lines.append(f"- {name}: MIR {mir:.3f}; FD per layer " + ", ".join(f"{v:.3g}" for v in fds))
    lines += ["", "## Weight updates of the target (Table 10)", "",
              "| arm | density tau=1e-5 | tau=1e-4 | tau=1e-3 | intrusion dimension (eps 0.5, top-10) |", "|---|---|---|---|---|"]
    for a in ARMS:
        d = [summary([seeds[s]["arms"][a.name]["updates"]["density"][t] for s in seeds]) for t in ("1e-05", "0.0001", "0.001")]
        lines.append(f"| {a.name} | " + " | ".join(_ms(x, 3) for x in d) + f" | {_ms(S['intrusion'][a.name])} |")
    lines += ["", "## Cost (Table 5)", "",
              "Per training stage, the optimizer steps' time (HF train_runtime) and the process's CPU time, one core "
              "per process; the ratio is the arm's mean over the baseline's. The DPA arms' perceiver is trained once "
              "more before them (its own row).", "",
              "| model | stage 1 steps (s) | stage 2 steps (s) | ratio to baseline | CPU both stages (s) |", "|---|---|---|---|---|"]
    base_t = S["train_s"][BASELINE.name]["mean"]
    for name, rows in [(a.name, [seeds[s]["arms"][a.name] for s in seeds]) for a in ARMS] + \
            [("perceiver (trained once per seed)", [seeds[s]["perceivers"]["perceiver"] for s in seeds])]:
        s1 = summary([r["stages"]["1"]["train_runtime"] for r in rows])
        s2 = summary([r["stages"]["2"]["train_runtime"] for r in rows])
        cpu = summary([_sum(r["stages"]["1"]["cpu"], r["stages"]["2"]["cpu"]) for r in rows])
        both = (s1["mean"] or 0) + (s2["mean"] or 0)
        ratio = f"{both / base_t:.2f}" if base_t else "-"
        lines.append(f"| {name} | {_ms(s1)} | {_ms(s2)} | {ratio} | {_ms(cpu, 0)} |")
    lines += ["", "Plots: loss_curves.png, accuracy.png, forgetting.png, mir.png. Every per-seed number: report.json.", ""]
    return "\n".join(lines)


def mir_rows(seeds: dict) -> list[tuple[str, list[float], float]]:
    """(view, mean FD per layer, mean MIR) over seeds, for every model MIR measured."""
    views: dict[str, list] = {}
    for s in seeds.values():
        for a in ARMS:
            views.setdefault(f"{a.name} (target)", []).append(s["arms"][a.name]["mir"])
            if "mir_perceiver" in s["arms"][a.name]:
                views.setdefault(f"{a.name} (its perceiver)", []).append(s["arms"][a.name]["mir_perceiver"])
        for name in PERCEIVERS:
            if "mir" in s["perceivers"][name]:
                views.setdefault(f"{name} (standalone)", []).append(s["perceivers"][name]["mir"])
    out = []
    for name, records in views.items():
        layers = len(records[0]["fd"])
        out.append((name, [sum(r["fd"][k] for r in records) / len(records) for k in range(layers)],
                    sum(r["mir"] for r in records) / len(records)))
    return out


# ---- plots ----------------------------------------------------------------------------------------------------
def _half_width(s: dict) -> float:
    if s["n"] < 2 or s["sd"] is None:
        return 0.0
    return t_quantile(s["n"] - 1) * s["sd"] / math.sqrt(s["n"])


def plots(report: dict, out: Path) -> list[str]:
    from llava_dpa.analysis.plots import (  # lazy: matplotlib, the analysis extra
        pyplot,
        save,
    )

    plt = pyplot()
    seeds, S = report["seeds"], report["summaries"]
    names = [a.name for a in ARMS]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for stage, ax in zip(("1", "2"), axes):
        rows = [(a, [seeds[s]["arms"][a]["stages"][stage]["curve"] for s in seeds]) for a in names]
        rows.append(("perceiver", [seeds[s]["perceivers"]["perceiver"]["stages"][stage]["curve"] for s in seeds]))
        for name, curves in rows:
            steps = min(len(c) for c in curves)
            mean = [sum(c[i][1] for c in curves) / len(curves) for i in range(steps)]
            ax.plot([curves[0][i][0] for i in range(steps)], mean, label=name, linewidth=1,
                    linestyle="--" if name == "perceiver" else "-")
        ax.set_title(f"stage {stage} training loss (mean over {len(seeds)} seed(s))", fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    save(fig, str(out / "loss_curves.png"))
    written.append("loss_curves.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    keys = [("iid", "i.i.d."), ("comp", "compositional"), ("text_after", "text after")]
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = [k + (i - (len(names) - 1) / 2) * width for k in range(len(keys))]
        ax.bar(xs, [S[k][name]["mean"] for k, _ in keys], width, label=name,
               yerr=[_half_width(S[k][name]) for k, _ in keys], capsize=3)
    chance = report["world"]
    for k, level in enumerate((chance["chance_test_iid"]["overall"], chance["chance_test_comp"]["overall"],
                               chance["chance_text"]["overall"])):
        ax.hlines(100 * level, k - 0.45, k + 0.45, colors="k", linestyles=":", label="chance" if k == 0 else None)
    ax.hlines(report["parts"]["text_before"]["accuracy"], 1.55, 2.45, colors="r", linestyles="--", label="text before")
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([lab for _, lab in keys])
    ax.set_ylabel(f"accuracy (%), {LEVEL:.0%} interval of the mean")
    ax.legend(fontsize=7)
    save(fig, str(out / "accuracy.png"))
    written.append("accuracy.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(names, [S["forgetting"][n]["mean"] for n in names], yerr=[_half_width(S["forgetting"][n]) for n in names],
           capsize=3, color="tab:red")
    ax.set_ylabel("forgetting: text accuracy before - after (points)")
    ax.set_title("Text forgetting of the target (lower: less forgotten)", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    save(fig, str(out / "forgetting.png"))
    written.append("forgetting.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, fds, mir in mir_rows(seeds):
        n = len(fds)
        ax.plot([(k + 1) / n for k in range(n)], fds, marker="o", markersize=3, label=f"{name} (MIR {mir:.2f})",
                linestyle="--" if "perceiver" in name else "-")
    ax.set_xlabel("relative layer depth")
    ax.set_ylabel("Fréchet distance, visual vs text")
    ax.set_yscale("log")
    ax.legend(fontsize=6)
    ax.set_title("Modality gap per layer (mean over seeds)", fontsize=9)
    save(fig, str(out / "mir.png"))
    written.append("mir.png")
    return written


def write(report: dict, out: Path) -> list[str]:
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown(report))
    return ["report.md", "report.json", *plots(report, out)]


def command_line() -> list[str]:
    return ["llava-dpa", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("llava-dpa") else list(sys.argv)
