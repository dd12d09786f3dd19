"""Offline scoring (no lmms-eval) of LLaVA-format question files, on a local benchmark from the synthetic data."""
import json

import pytest

from conftest import PY, REPO, run
from llava_dpa.eval.offline import anls, normalise, predicted_letter, score


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_metrics_on_known_cases(tmp_path):
    assert normalise("The Red.") == "red"
    assert anls("red", ["red"]) == 1.0 and anls("xyz", ["red"]) == 0.0
    assert anls("reds", ["red"]) == pytest.approx(0.75)
    assert predicted_letter("B. square", ["circle", "square"]) == "B"
    assert predicted_letter("square", ["circle", "square", "triangle"]) == "B"
    assert predicted_letter("I think (C)", ["a", "b", "c"]) == "C"
    questions = write(tmp_path / "q.jsonl", [
        {"question_id": 1, "text": "?", "answer": "red", "type": "short"},
        {"question_id": 2, "text": "?", "answer": ["blue", "navy"], "type": "short"},
        {"question_id": 3, "text": "?", "answer": "A", "type": "mc", "choices": ["x", "y"]},
        {"question_id": 4, "text": "?", "answer": "B", "type": "mc", "choices": ["x", "y"]}])
    answers = write(tmp_path / "a.jsonl", [{"question_id": 1, "text": "Red"}, {"question_id": 2, "text": "navi"},
                                           {"question_id": 3, "text": "A"}, {"question_id": 4, "text": "A"}])
    result = score(questions, answers)
    assert result["short_answer"] == {"n": 2, "exact_match": 0.5, "anls": pytest.approx((1 + 0.75) / 2)}
    assert result["multiple_choice"] == {"n": 2, "accuracy": 0.5}
    partial = write(tmp_path / "p.jsonl", [{"question_id": 1, "text": "red"}])
    with pytest.raises(KeyError, match="3 question"):
        score(questions, partial)


def test_local_benchmark_end_to_end(zoo, baseline_stage2, tmp_path, capsys):
    answers = tmp_path / "answers.jsonl"
    run(["bash", str(REPO / "scripts/eval/llava_vqa.sh"), str(baseline_stage2), zoo["benchmark"], zoo["images"],
         str(answers)], env={"PYTHON": PY, "MAX_NEW_TOKENS": "6"})
    from llava_dpa.cli import main

    assert main(["score", "--questions", zoo["benchmark"], "--answers", str(answers)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 48 and result["short_answer"]["n"] == 24 and result["multiple_choice"]["n"] == 24
    # the scores are what these answers earn, counted here by hand from the two files
    truth = {q["question_id"]: q for q in map(json.loads, open(zoo["benchmark"]).read().splitlines())}
    given = {a["question_id"]: a["text"] for a in map(json.loads, answers.read_text().splitlines())}
    short = [q for q in truth.values() if q["type"] == "short"]

    def words(text):  # lower case, no punctuation, no articles (the ANLS/VQA convention)
        kept = "".join(c for c in text.lower() if c.isalnum() or c.isspace())
        return [w for w in kept.split() if w not in ("a", "an", "the")]

    exact = sum(words(given[q["question_id"]]) in [words(a) for a in ([q["answer"]] if isinstance(q["answer"], str)
                                                                      else q["answer"])] for q in short)
    assert result["short_answer"]["exact_match"] == pytest.approx(exact / len(short))
