"""`llava-dpa lmms-task`: its arguments; the work is `llava_dpa.eval.lmms_tasks`'s."""
from __future__ import annotations

from llava_dpa.eval.lmms_tasks import write_task


def register(sub) -> None:
    p = sub.add_parser("lmms-task", help="turn a LLaVA-format question file into local lmms-eval tasks "
                                         "(run them with --include_path)")
    p.add_argument("--questions", required=True)
    p.add_argument("--images", default=None, help="the folder the questions' images are in")
    p.add_argument("--output", required=True, help="task folder to write")
    p.add_argument("--name", default="local", help="task name prefix")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.set_defaults(func=lambda a: print(",".join(write_task(a.questions, a.images, a.output, a.name,
                                                             a.max_new_tokens))))
