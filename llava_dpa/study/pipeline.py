"""`llava-dpa study OUT`, end to end: run every step (runner.py), read the measures (measures.py), write the
report (report.py)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from llava_dpa.study import measures, report
from llava_dpa.study.runner import StudyConfig, part_paths, run_study


def _final_loss(folder: str):
    path = Path(folder) / "pretraining.json"
    if not path.is_file():
        return None
    losses = json.loads(path.read_text())["losses"]
    tail = losses[-20:]
    return round(sum(tail) / len(tail), 4)


def parts_facts(config: StudyConfig, seeds: dict) -> dict:
    paths = part_paths(config)
    vit = Path(paths["vit"]) / "pretraining.json"
    first = seeds[min(seeds, key=int)]
    return {"paths": paths, "text_before": first["text_before"],
            "vit": {k: v for k, v in json.loads(vit.read_text()).items() if k != "losses"} if vit.is_file() else None,
            "target_loss": _final_loss(paths["target"]), "perceiver_lm_loss": _final_loss(paths["perceiver_lm"])}


def run(config: StudyConfig, command: list[str], log=print) -> dict:
    start = time.time()
    done = run_study(config, log)
    world, timings = done["world"], done["timings"]
    log("[study] measuring")
    seeds = {str(s): measures.seed_measures(config, world, s, timings) for s in config.seeds}
    built = report.build(config, measures.world_facts(world), seeds, parts_facts(config, seeds), command,
                         time.time() - start)
    written = report.write(built, config.out)
    log(f"[study] wrote {', '.join(str(config.out / w) for w in written)}")
    return built
