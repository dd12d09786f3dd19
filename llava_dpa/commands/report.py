"""`llava-dpa report`: its arguments; the work is `llava_dpa.eval.report`'s."""
from __future__ import annotations

import json
from pathlib import Path

from llava_dpa.eval.report import build_table, load_inputs, to_csv, to_markdown, to_png


def register(sub) -> None:
    p = sub.add_parser("report", help="benchmark scores in the layout of the paper's Table 1")
    p.add_argument("inputs", nargs="+", help="a JSON {model: {benchmark: score}} file, or lmms-eval result folders")
    p.add_argument("--pair", action="append", default=[],
                   help="DPA=BASELINE or DPA=BASELINE@LLM: add a Δ row, and with an LLM row the forgetting "
                        "reduction against it (repeatable)")
    p.add_argument("--llm", default=None, help="the row holding the original LLM's text scores (forgetting), for "
                                               "every --pair that names none")
    p.add_argument("--format", choices=["markdown", "csv", "json", "png"], default="markdown",
                   help="png: a bar chart (needs --output)")
    p.add_argument("--output", default=None, help="write here instead of printing")

    def run(a):
        pairs = []
        for item in a.pair:
            if "=" not in item:
                raise ValueError(f"--pair {item!r}: write DPA=BASELINE or DPA=BASELINE@LLM")
            dpa, rest = item.split("=", 1)
            base, _, pair_llm = rest.partition("@")
            pairs.append((dpa, base, pair_llm or None))
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
