"""Offline scoring of LLaVA-format question files, with no lmms-eval: `llava-dpa score`.

Questions (jsonl, as llava.eval.model_vqa_loader reads them) carry their ground truth:
    {"question_id", "image", "text", "answer": str | [str, ...], "type": "mc" | "short", "choices": [...]}
Answers are model_vqa_loader's output ({"question_id", "text"}).

- multiple choice ("mc"): the predicted option letter (a leading/standalone letter, or the text of a choice)
  against the answer letter -> accuracy;
- short answer ("short"): exact match after normalisation (lowercase, no punctuation or articles) and ANLS
  (average normalised Levenshtein similarity, 0 below 0.5, best over the reference answers).
"""
from __future__ import annotations

import json
import re
import string
from pathlib import Path

LETTERS = "ABCDEFGH"
ANLS_THRESHOLD = 0.5


def normalise(text: str) -> str:
    text = text.lower().strip()
    text = "".join(ch for ch in text if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def anls(prediction: str, references: list[str]) -> float:
    best = 0.0
    p = prediction.lower().strip()
    for ref in references:
        r = ref.lower().strip()
        length = max(len(p), len(r))
        similarity = 1.0 - levenshtein(p, r) / length if length else 1.0
        best = max(best, similarity if similarity >= ANLS_THRESHOLD else 0.0)
    return best


def predicted_letter(prediction: str, choices: list[str]) -> str | None:
    text = prediction.strip()
    match = re.match(rf"^\(?([{LETTERS}])[\).:\s]|^([{LETTERS}])$", text)
    if match:
        return match.group(1) or match.group(2)
    match = re.search(rf"\b([{LETTERS}])\b", text)
    if match and match.group(1) in LETTERS[:len(choices)]:
        return match.group(1)
    for letter, choice in zip(LETTERS, choices):
        if normalise(choice) and normalise(choice) == normalise(text):
            return letter
    return None


def read_jsonl(path: str) -> list[dict]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def score(questions_path: str, answers_path: str) -> dict:
    questions = {q["question_id"]: q for q in read_jsonl(questions_path)}
    answers = {a["question_id"]: a["text"] for a in read_jsonl(answers_path)}
    missing = [qid for qid in questions if qid not in answers]
    if missing:
        raise KeyError(f"{len(missing)} question(s) have no answer in {answers_path}, e.g. {missing[:3]}")
    mc, em, anls_scores = [], [], []
    for qid, q in questions.items():
        if "answer" not in q:
            raise KeyError(f"question {qid!r} has no 'answer' (ground truth) in {questions_path}")
        refs = q["answer"] if isinstance(q["answer"], list) else [q["answer"]]
        kind = q.get("type", "short")
        if kind == "mc":
            mc.append(float(predicted_letter(answers[qid], q.get("choices", [])) == refs[0].strip().upper()))
        elif kind == "short":
            em.append(float(normalise(answers[qid]) in {normalise(r) for r in refs}))
            anls_scores.append(anls(answers[qid], refs))
        else:
            raise ValueError(f"question {qid!r}: unknown type {kind!r} (mc or short)")
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"questions": len(questions), "multiple_choice": {"n": len(mc), "accuracy": mean(mc)},
            "short_answer": {"n": len(em), "exact_match": mean(em), "anls": mean(anls_scores)}}
