"""`llava-dpa report` reproduces the paper's Table 1 averages, Δ rows and forgetting reductions from the
paper's own per-benchmark numbers."""
import json

import pytest

from conftest import PY, run
from llava_dpa.eval.report import BENCHMARKS, build_table

pytestmark = pytest.mark.fast  # pure logic: no training subprocess

# Table 1, per benchmark, in BENCHMARKS order: MMVet MMStar SeedBench2+ MMMU MathVista MathVision OCRBench AI2D
# MATH-500 MMLU-Redux GPQA-Diamond; followed by the paper's General, Reasoning, Perception, Text, Multi, All.
PAPER = {
    "LLaVA-NeXT-LLaMA-3.2-3B": ([30.8, 41.0, 50.5, 32.9, 34.0, 15.4, 62.0, 59.0, 4.8, 41.0, 17.2],
                                [40.8, 27.4, 60.5, 21.0, 40.7, 35.3]),
    "DPA-LLaMA-3.2-3B": ([42.0, 40.7, 51.7, 37.8, 36.7, 15.0, 69.2, 59.5, 6.4, 43.6, 25.3],
                         [44.8, 29.8, 64.3, 25.1, 44.1, 38.9]),
    "LLaVA-NeXT-Qwen3-4B": ([41.4, 50.7, 61.2, 49.9, 49.6, 20.7, 69.1, 67.4, 36.4, 66.0, 32.8],
                            [51.1, 40.1, 68.3, 45.1, 51.2, 49.6]),
    "DPA-Qwen3-4B": ([42.7, 50.7, 64.0, 50.0, 51.8, 21.2, 74.7, 70.0, 54.2, 70.2, 33.3],
                     [52.5, 41.0, 72.4, 52.6, 53.1, 53.0]),
    "LLaVA-NeXT-Qwen3-32B": ([49.2, 56.1, 67.5, 56.9, 61.8, 26.3, 73.8, 73.0, 44.4, 79.5, 35.3],
                             [57.6, 48.3, 73.4, 53.1, 58.1, 56.7]),
    "DPA-Qwen3-32B": ([56.0, 59.1, 67.7, 57.1, 63.7, 29.4, 76.8, 79.0, 58.2, 80.6, 35.4],
                      [60.9, 50.1, 77.9, 58.1, 61.1, 60.3]),
}
LLM_TEXT = {"Qwen3-4B": [84.8, 77.3, 41.7], "Qwen3-32B": [88.6, 85.7, 54.6]}
SUMMARY = ["General", "Reasoning", "Perception", "Text", "Multi. Avg.", "All Avg."]


@pytest.fixture()
def paper_scores():
    models = {name: dict(zip(BENCHMARKS, values)) for name, (values, _) in PAPER.items()}
    for name, text in LLM_TEXT.items():
        models[name] = dict(zip(BENCHMARKS[-3:], text))
    return models


def test_averages_match_the_paper_to_the_rounding(paper_scores):
    table = build_table(paper_scores)
    for name, (_, expected) in PAPER.items():
        for column, value in zip(SUMMARY, expected):
            # the paper's per-benchmark numbers are themselves rounded to 0.1
            assert abs(table["rows"][name][column] - value) <= 0.05 + 1e-9, (name, column)
    assert table["rows"]["Qwen3-4B"]["Text"] == pytest.approx(67.93, abs=0.01) and table["rows"]["Qwen3-4B"]["All Avg."] is None


def test_delta_rows_and_forgetting_reductions(paper_scores):
    table = build_table(paper_scores, [("DPA-Qwen3-4B", "LLaVA-NeXT-Qwen3-4B")], llm="Qwen3-4B")
    delta = table["deltas"]["Δ DPA-Qwen3-4B - LLaVA-NeXT-Qwen3-4B"]
    assert delta["MATH-500"] == pytest.approx(17.8) and delta["Text"] == pytest.approx(7.5, abs=0.05)
    assert delta["Multi. Avg."] == pytest.approx(1.9, abs=0.06) and delta["AI2D"] == pytest.approx(2.6)
    f = table["forgetting"]["DPA-Qwen3-4B vs LLaVA-NeXT-Qwen3-4B"]
    assert round(f["relative_reduction"] * 100, 1) == 32.9 and f["points"] == pytest.approx(7.5, abs=0.05)
    big = build_table(paper_scores, [("DPA-Qwen3-32B", "LLaVA-NeXT-Qwen3-32B")], llm="Qwen3-32B")
    assert round(big["forgetting"]["DPA-Qwen3-32B vs LLaVA-NeXT-Qwen3-32B"]["relative_reduction"] * 100, 1) == 21.6


def test_cli_formats_and_errors(paper_scores, tmp_path, capsys):
    from llava_dpa.cli import main

    def cli(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    path = tmp_path / "scores.json"
    path.write_text(json.dumps(paper_scores))
    base = ["report", str(path), "--pair", "DPA-Qwen3-4B=LLaVA-NeXT-Qwen3-4B", "--llm", "Qwen3-4B"]
    code, md, _ = cli(*base)
    assert code == 0
    assert "| DPA-Qwen3-4B | 42.7 |" in md and "(32.9% relative)" in md and "| Δ DPA-Qwen3-4B - LLaVA-NeXT-Qwen3-4B |" in md
    csv_text = cli(*base, "--format", "csv")[1]
    assert csv_text.splitlines()[0].startswith("model,MMVet,MMStar,SeedBench2Plus,General")
    data = json.loads(cli(*base, "--format", "json")[1])
    assert data["rows"]["DPA-Qwen3-4B"]["Perception"] == pytest.approx(72.35)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"m": {"MMBench": 1.0}}))
    code, _, err = cli("report", str(bad))
    assert code == 2 and "unknown benchmark name(s) ['MMBench']" in err
    # the console script is the same function
    proc = run([PY, "-m", "llava_dpa.cli", "report", str(bad)], check=False)
    assert proc.returncode == 2 and "unknown benchmark name(s) ['MMBench']" in proc.stderr


def test_png_chart_and_lmms_eval_folders(paper_scores, tmp_path):
    from llava_dpa.cli import main
    from llava_dpa.eval.report import load_lmms_eval_folder, to_png

    chart = tmp_path / "table1.png"
    to_png(build_table(paper_scores, [("DPA-Qwen3-4B", "LLaVA-NeXT-Qwen3-4B")], "Qwen3-4B"), str(chart))
    from PIL import Image

    with Image.open(chart) as image:
        assert image.format == "PNG" and image.size[0] > 800
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(paper_scores))
    assert main(["report", str(path), "--format", "png"]) == 2  # a chart needs --output

    # lmms-eval's results file (metric,filter keys, fractions) and lm-evaluation-harness's group score
    run_dir = tmp_path / "dpa" / "lmms_eval" / "model"
    run_dir.mkdir(parents=True)
    (run_dir / "20261122_results.json").write_text(json.dumps({"results": {
        "mmstar": {"alias": "mmstar", "average,none": 0.523, "average_stderr,none": 0.01},
        "mathvista_testmini_format": {"llm_as_judge_eval,none": 49.9},
        "ocrbench": {"ocrbench_accuracy,none": 0.671}}}))
    (tmp_path / "dpa" / "lm_eval").mkdir()
    (tmp_path / "dpa" / "lm_eval" / "results_2026.json").write_text(json.dumps({
        "groups": {"mmlu_redux_generative": {"exact_match,strict-match": 0.719}}, "results": {}}))
    scores = load_lmms_eval_folder(tmp_path / "dpa")
    assert scores == pytest.approx({"MMStar": 52.3, "MathVista": 49.9, "OCRBench": 67.1, "MMLU-Redux": 71.9})
