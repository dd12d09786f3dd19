"""`llava-dpa report`: benchmark scores in the layout of the paper's Table 1.

Per-benchmark scores; group averages (General, Reasoning, Perception, Text); Multi. Avg. (the mean of the
8 multimodal benchmarks) and All Avg. (the mean of all 11); a Δ row per `--pair DPA=BASELINE`; and, given
`--llm NAME` (a row holding the original LLM's text scores), the relative reduction in text forgetting:
(F_baseline - F_dpa) / F_baseline with F = LLM text avg - model text avg, computed from the Text averages
as printed (one decimal), as the paper does. These definitions reproduce the paper's averages and its
32.9% / 21.6% reductions from its own per-benchmark numbers.

Input: one JSON file {model: {benchmark: score}} with the paper's benchmark names, or lmms-eval result
folders (their results_*.json), whose task names are mapped to the paper's.
"""
from __future__ import annotations

import csv
import io
import json
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


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarize(scores: dict[str, float]) -> dict[str, float | None]:
    unknown = set(scores) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown benchmark name(s) {sorted(unknown)}; use the paper's names: {BENCHMARKS}")
    row = {b: scores.get(b) for b in BENCHMARKS}
    for group, members in GROUPS.items():
        row[group] = mean([scores.get(b) for b in members]) if all(b in scores for b in members) else None
    row["Multi. Avg."] = mean([scores[b] for b in MULTIMODAL]) if all(b in scores for b in MULTIMODAL) else None
    row["All Avg."] = mean([scores[b] for b in BENCHMARKS]) if all(b in scores for b in BENCHMARKS) else None
    return row


def build_table(models: dict[str, dict], pairs: list[tuple[str, str]] = (), llm: str | None = None) -> dict:
    rows = {name: summarize(scores) for name, scores in models.items()}
    deltas, forgetting = {}, {}
    for dpa, base in pairs:
        for name in (dpa, base):
            if name not in rows:
                raise KeyError(f"--pair names {name!r}, which is not among the models {sorted(rows)}")
        deltas[f"Δ {dpa} - {base}"] = {c: (rows[dpa][c] - rows[base][c]) if rows[dpa][c] is not None and
                                       rows[base][c] is not None else None for c in COLUMNS}
        if llm is not None:
            if llm not in rows or rows[llm]["Text"] is None:
                raise KeyError(f"--llm {llm!r} needs a row with the three text benchmarks")
            # From the Text averages as the table prints them (one decimal), as the paper computes it.
            text = {n: round(rows[n]["Text"], 1) for n in (llm, base, dpa)}
            f_base = text[llm] - text[base]
            f_dpa = text[llm] - text[dpa]
            forgetting[f"{dpa} vs {base}"] = {"forgetting_baseline": f_base, "forgetting_dpa": f_dpa,
                                              "points": f_base - f_dpa, "relative_reduction": (f_base - f_dpa) / f_base}
    return {"columns": COLUMNS, "rows": rows, "deltas": deltas, "forgetting": forgetting}


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
    return f"{v:+.1f}" if signed else f"{v:.1f}"


def to_markdown(table: dict) -> str:
    cols = table["columns"]
    lines = ["| Model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in table["rows"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c]) for c in cols) + " |")
    for name, row in table["deltas"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row[c], signed=True) for c in cols) + " |")
    for name, f in table["forgetting"].items():
        lines.append(f"\nText forgetting, {name}: baseline {f['forgetting_baseline']:.1f}, DPA {f['forgetting_dpa']:.1f} "
                     f"points; reduction {f['points']:+.1f} points ({f['relative_reduction']:.1%} relative)")
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
    from llava_dpa.analysis.plots import pyplot, save

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
    title = "; ".join(f"{k}: forgetting {v['relative_reduction']:.1%} lower" for k, v in table["forgetting"].items())
    ax.set_title(title or "Benchmarks (shaded: averages)", fontsize=9)
    save(fig, path)


def register(sub) -> None:
    p = sub.add_parser("report", help="benchmark scores in the layout of the paper's Table 1")
    p.add_argument("inputs", nargs="+", help="a JSON {model: {benchmark: score}} file, or lmms-eval result folders")
    p.add_argument("--pair", action="append", default=[], help="DPA=BASELINE: add a Δ row (repeatable)")
    p.add_argument("--llm", default=None, help="the row holding the original LLM's text scores (forgetting)")
    p.add_argument("--format", choices=["markdown", "csv", "json", "png"], default="markdown",
                   help="png: a bar chart (needs --output)")
    p.add_argument("--output", default=None, help="write here instead of printing")

    def run(a):
        pairs = []
        for item in a.pair:
            if "=" not in item:
                raise ValueError(f"--pair {item!r}: write DPA=BASELINE")
            pairs.append(tuple(item.split("=", 1)))
        table = build_table(load_inputs(a.inputs), pairs, a.llm)
        if a.format == "png":
            if not a.output:
                raise ValueError("--format png writes a file: give --output chart.png")
            to_png(table, a.output)
            print(f"wrote {a.output}")
            return
        text = {"markdown": to_markdown, "csv": to_csv, "json": lambda t: json.dumps(t, indent=1)}[a.format](table)
        if a.output:
            Path(a.output).write_text(text)
        else:
            print(text, end="")

    p.set_defaults(func=run)
