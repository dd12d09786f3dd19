"""`llava-dpa score`: its arguments; the work is `llava_dpa.eval.offline`'s."""
from __future__ import annotations

import json

from llava_dpa.eval.offline import score


def register(sub) -> None:
    p = sub.add_parser("score", help="score model_vqa_loader answers against a question file's ground truth")
    p.add_argument("--questions", required=True)
    p.add_argument("--answers", required=True)
    p.set_defaults(func=lambda a: print(json.dumps(score(a.questions, a.answers), indent=1)))
