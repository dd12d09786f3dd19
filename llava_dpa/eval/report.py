"""`llava-dpa report`: benchmark scores in the layout of the paper's Table 1.

Per-benchmark scores; group averages (General, Reasoning, Perception, Text); Multi. Avg. (the mean of the
8 multimodal benchmarks) and All Avg. (the mean of all 11); a Δ row per `--pair DPA=BASELINE`; and, given an
LLM row (`--llm NAME`, or `--pair DPA=BASELINE@LLM`) holding the original LLM's text scores, the text
forgetting and the reduction DPA gives.

The paper's convention, which this follows (tests/test_report.py checks it against every cell of Table 1):
- every number is printed to one decimal, rounded half up (`printed`); an average is the mean of the
  per-benchmark numbers as given (full precision), then rounded;
- a Δ cell is the difference of the two *printed* cells: e.g. the 32B Reasoning Δ is +1.8 = 50.1 - 48.3,
  where the unrounded means differ by 1.73;
- forgetting F = printed LLM Text avg - printed model Text avg; the reduction is F_baseline - F_dpa points
  (the Text Δ) and (F_baseline - F_dpa) / F_baseline relative, printed as a percentage to one decimal:
  4B: (67.9 - 45.1) - (67.9 - 52.6) = 7.5 points, 7.5 / 22.8 = 32.9% (the unrounded means give 32.8%).
`rows` hold the printed averages; `unrounded` holds the exact means.

Input: one JSON file {model: {benchmark: score}} with the paper's benchmark names, or lmms-eval result
folders (their results_*.json), whose task names are mapped to the paper's.
"""
from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

GROUPS = {
    "General": ["MMVet", "MMStar", "SeedBench2Plus"],
    "Reasoning": ["MMMU", "MathVista", "MathVision"],
    "Perception": ["OCRBench", "AI2D"],
    "Text": ["MATH-500", "MMLU-Redux", "GPQA-Diamond"],
}
MULTIMODAL = GROUPS["General"] + GROUPS["Reasoning"] + GROUPS["Perception"]
BENCHMARKS = MULTIMODAL + GROUPS["Text"]
COLUMNS = (GROUPS["General"] + ["General"] + GROUPS["Reasoning"] + ["Reasoning"] + GROUPS["Perception"]
           + ["Perception"] + GROUPS["Text"] + ["Text", "Multi. Avg.", "All Avg."])

# lmms-eval task name -> (paper benchmark, metric keys to try, scale to percent)
LMMS_TASKS = {
    "mmvet": ("MMVet", ["gpt_eval_score"], 1.0),
    "mmstar": ("MMStar", ["average"], 100.0),
    "seedbench_2_plus": ("SeedBench2Plus", ["seedbench_2_plus_all"], 100.0),
    "mmmu_val": ("MMMU", ["mmmu_acc"], 100.0),
    "mathvista_testmini_format": ("MathVista", ["llm_as_judge_eval"], 1.0),
    "mathvista_testmini": ("MathVista", ["gpt_eval_score", "llm_as_judge_eval"], 1.0),
    "mathvision_test": ("MathVision", ["mathvision_standard_eval"], 1.0),
    "ocrbench": ("OCRBench", ["ocrbench_accuracy"], 100.0),
    "ai2d": ("AI2D", ["exact_match"], 100.0),
    "openai_math": ("MATH-500", ["exact_match"], 100.0),
    "gpqa_diamond_openai": ("GPQA-Diamond", ["exact_match"], 100.0),
    "mmlu_redux_generative": ("MMLU-Redux", ["exact_match"], 100.0),
}


PRINTED_DECIMALS = 1  # Table 1 prints every score, average and Δ to one decimal


def _dec(value) -> Decimal:
    # repr: the shortest decimal that is this float, so 64.35 is 64.35 and not 64.3499999...
    return Decimal(repr(float(value)))


def printed(value, decimals: int = PRINTED_DECIMALS) -> float | None:
    """`value` as the paper prints it: `decimals` places, ties rounded half up (away from zero)."""
    if value is None:
        return None
    return float(_dec(value).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def mean(values):
    values = [v for v in values if v is not None]
    return float(sum(map(_dec, values)) / len(values)) if values else None


def _difference(a, b) -> float | None:
    """printed(a) - printed(b), exactly (no float residue: 50.1 - 48.3 is 1.8)."""
    if a is None or b is None:
        return None
    return float(_dec(printed(a)) - _dec(printed(b)))


def unrounded_summary(scores: dict[str, float]) -> dict[str, float | None]:
    """Per-benchmark scores as given and the exact (unrounded) averages."""
    unknown = set(scores) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmark name(s) {sorted(unknown)}; use the paper's names: {BENCHMARKS}")
    row = {b: scores.get(b) for b in BENCHMARKS}
    for group, members in GROUPS.items():
        row[group] = mean([scores.get(b) for b in members]) if all(b in scores for b in members) else None
    row["Multi. Avg."] = mean([scores[b] for b in MULTIMODAL]) if all(b in scores for b in MULTIMODAL) else None
    row["All Avg."] = mean([scores[b] for b in BENCHMARKS]) if all(b in scores for b in BENCHMARKS) else None
    return row


def summarize(scores: dict[str, float]) -> dict[str, float | None]:
    """A Table 1 row: per-benchmark scores as given; averages from them, rounded to the printed precision."""
    row = unrounded_summary(scores)
    return {c: (printed(v) if c not in BENCHMARKS else v) for c, v in row.items()}


def _parse_pair(pair) -> tuple[str, str, str | None]:
    if len(pair) == 2:
        return pair[0], pair[1], None
    dpa, base, llm = pair
    return dpa, base, llm


def forgetting_reduction(rows: dict, dpa: str, base: str, llm: str) -> dict:
    """Text forgetting against the text-only LLM, from the printed Text averages (and per text benchmark)."""
    if llm not in rows or rows[llm]["Text"] is None:
        raise KeyError(f"--llm {llm!r} needs a row with the three text benchmarks")

    def reduction(column):
        if rows[base][column] is None or rows[dpa][column] is None:
            return dict.fromkeys(("forgetting_baseline", "forgetting_dpa", "points", "relative_reduction",
                                  "relative_reduction_pct"))
        ref, b, d = (_dec(printed(rows[n][column])) for n in (llm, base, dpa))
        f_base, f_dpa = ref - b, ref - d
        rel = (f_base - f_dpa) / f_base if f_base else None
        return {"forgetting_baseline": float(f_base), "forgetting_dpa": float(f_dpa),
                "points": float(f_base - f_dpa), "relative_reduction": None if rel is None else float(rel),
                "relative_reduction_pct": None if rel is None else printed(rel * 100)}

    out = reduction("Text")
    out["llm"] = llm
    out["per_benchmark"] = {b: reduction(b) for b in GROUPS["Text"]
                            if all(rows[n][b] is not None for n in (llm, base, dpa))}
    return out


def build_table(models: dict[str, dict], pairs=(), llm: str | None = None) -> dict:
    """`pairs`: (DPA, BASELINE) or (DPA, BASELINE, LLM); a pair's own LLM wins over `llm`, and a pair with
    neither gets a Δ row and no forgetting."""
    unrounded = {name: unrounded_summary(scores) for name, scores in models.items()}
    rows = {name: summarize(scores) for name, scores in models.items()}
    deltas, forgetting = {}, {}
    for pair in pairs:
        dpa, base, pair_llm = _parse_pair(pair)
        for name in (dpa, base):
            if name not in rows:
                raise KeyError(f"--pair names {name!r}, which is not among the models {sorted(rows)}")
        deltas[f"Δ {dpa} - {base}"] = {c: _difference(rows[dpa][c], rows[base][c]) for c in COLUMNS}
        if (pair_llm or llm) is not None:
            forgetting[f"{dpa} vs {base}"] = forgetting_reduction(rows, dpa, base, pair_llm or llm)
    return {"columns": COLUMNS, "rows": rows, "deltas": deltas, "forgetting": forgetting, "unrounded": unrounded}


# ---- inputs ----------------------------------------------------------------------------------------
def load_lmms_eval_folder(folder: Path) -> dict[str, float]:
    scores = {}
    files = sorted(folder.rglob("*results*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no lmms-eval results_*.json inside")
    seen = set()
    for f in files:
        data = json.loads(f.read_text())
        # lm-evaluation-harness reports a group's score (mmlu_redux_generative) under "groups"
        results = {**data.get("groups", {}), **data.get("results", {})}
        seen |= set(results)
        for task, metrics in results.items():
            if task not in LMMS_TASKS:
                continue
            name, keys, scale = LMMS_TASKS[task]
            for key in keys:
                value = next((v for k, v in metrics.items() if k.split(",")[0] == key and isinstance(v, (int, float))), None)
                if value is not None:
                    scores[name] = value * scale
                    break
    if not scores:
        raise ValueError(f"{folder}: no paper benchmark among the tasks {sorted(seen)}; "
                         f"the report knows {sorted(LMMS_TASKS)}")
    return scores


def load_inputs(paths: list[str]) -> dict[str, dict]:
    models = {}
    for p in map(Path, paths):
        if p.is_dir():
            models[p.name] = load_lmms_eval_folder(p)
        elif p.is_file():
            data = json.loads(p.read_text())
            if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
                raise ValueError(f"{p}: expected {{model: {{benchmark: score}}}}")
            models.update(data)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return models


# ---- outputs ---------------------------------------------------------------------------------------
def _fmt(v, signed=False):
    if v is None:
        return "-"
    v = printed(v)
    return f"{v:+.{PRINTED_DECIMALS}f}" if signed else f"{v:.{PRINTED_DECIMALS}f}"


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = ["| Model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    for name, row in table["deltas"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c], signed=True) for c in cols) + " |")
    for name, f in table["forgetting"].items():
        pct = "-" if f["relative_reduction_pct"] is None else f"{f['relative_reduction_pct']:.1f}%"
        lines.append(f"\nText forgetting against {f['llm']}, {name}: baseline {_fmt(f['forgetting_baseline'])}, "
                     f"DPA {_fmt(f['forgetting_dpa'])} points; reduction {_fmt(f['points'], True)} points ({pct} relative)")
    return "\n".join(lines) + "\n"


def to_csv(table: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model"] + table["columns"])
    for name, row in list(table["rows"].items()) + list(table["deltas"].items()):
        writer.writerow([name] + ["" if row[c] is None else round(row[c], 4) for c in table["columns"]])
    return buf.getvalue()


def to_png(table: dict, path: str) -> None:
    """Grouped bars: one group per benchmark and average, one bar per model (the Δ rows are left out)."""
    from llava_dpa.analysis.plots import pyplot, save  # lazy: matplotlib, an optional dependency (the eval extra)

    plt = pyplot()
    cols = [c for c in table["columns"] if any(row[c] is not None for row in table["rows"].values())]
    models = list(table["rows"])
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(min(24, max(10, len(cols) * (0.5 + 0.1 * len(models)))), 5))
    for i, name in enumerate(models):
        values = [table["rows"][name][c] or 0.0 for c in cols]
        ax.bar([x + (i - (len(models) - 1) / 2) * width for x in range(len(cols))], values, width, label=name)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=45, ha="right", fontsize=8)
    for x, c in enumerate(cols):
        if c in GROUPS or c in ("Multi. Avg.", "All Avg."):
            ax.axvspan(x - 0.45, x + 0.45, color="0.92", zorder=0)
    ax.set_ylabel("score")
    ax.legend(fontsize=8)
    title = "; ".join(f"{k}: forgetting {v['relative_reduction_pct']}% lower" for k, v in table["forgetting"].items()
                      if v["relative_reduction_pct"] is not None)
    ax.set_title(title or "Benchmarks (shaded: averages)", fontsize=9)
    save(fig, path)
