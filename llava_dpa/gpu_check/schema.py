"""The shape of gpu_check.json, checked before the runner writes it and by tests/test_gpu_check.py.

{"schema": SCHEMA, "mode": "gpu" | "cpu-smoke", "size": "full" | "smoke", "started": ISO time,
 "seconds": float, "deadline_s": float, "complete": bool (every planned check got a result),
 "environment": {"device", "driver", "cuda", "gpu_memory_gib", "python", "platform",
                 "commit" (the source tree's git HEAD, or $LLAVA_DPA_COMMIT),
                 "bundle_commit", "bundle_dirty" (the gpu_bundle's manifest.json; None without one), "dtype",
                 "attn_implementation", "versions": {package: version or None}},
 "checks": [{"name", "status", "seconds", "time_limit_s", "figures": {...}, "error": str or None}],
 "summary": {status: count}}
"""
from __future__ import annotations

SCHEMA = "llava-dpa-gpu-check/2"  # 2: environment.bundle_commit, bundle_dirty
STATUSES = ("passed", "failed", "error", "timeout", "skipped")
PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "pillow",
            "bitsandbytes", "llava-torch", "llava-dpa", "deepspeed", "flash-attn")
ENVIRONMENT = {"device": str, "driver": (str, type(None)), "cuda": (str, type(None)),
               "gpu_memory_gib": (float, int, type(None)), "python": str, "platform": str,
               "commit": (str, type(None)), "bundle_commit": (str, type(None)),
               "bundle_dirty": (bool, type(None)), "dtype": str, "attn_implementation": str, "versions": dict}
CHECK = {"name": str, "status": str, "seconds": (float, int), "time_limit_s": (float, int), "figures": dict,
         "error": (str, type(None))}
TOP = {"schema": str, "mode": str, "size": str, "started": str, "seconds": (float, int), "deadline_s": (float, int),
       "complete": bool, "environment": dict, "checks": list, "summary": dict}


def problems(report: dict) -> list[str]:
    """Every way the report departs from the schema (empty: it conforms)."""
    found = []

    def typed(where: str, obj: dict, spec: dict) -> None:
        for key, kind in spec.items():
            if key not in obj:
                found.append(f"{where}: no {key!r}")
            elif not isinstance(obj[key], kind) or (kind in (int, (float, int)) and isinstance(obj[key], bool)):
                found.append(f"{where}.{key}: {type(obj[key]).__name__}, expected {kind}")
        for key in set(obj) - set(spec):
            found.append(f"{where}: unexpected key {key!r}")

    if not isinstance(report, dict):
        return ["the report is not an object"]
    typed("report", report, TOP)
    if report.get("schema") != SCHEMA:
        found.append(f"report.schema: {report.get('schema')!r}, expected {SCHEMA!r}")
    if report.get("mode") not in ("gpu", "cpu-smoke"):
        found.append(f"report.mode: {report.get('mode')!r}")
    if isinstance(report.get("environment"), dict):
        typed("environment", report["environment"], ENVIRONMENT)
        versions = report["environment"].get("versions")
        if isinstance(versions, dict) and set(versions) != set(PACKAGES):
            found.append(f"environment.versions: packages {sorted(versions)}, expected {sorted(PACKAGES)}")
    names = set()
    for i, check in enumerate(report.get("checks") or []):
        if not isinstance(check, dict):
            found.append(f"checks[{i}]: not an object")
            continue
        typed(f"checks[{i}]", check, CHECK)
        if check.get("status") not in STATUSES:
            found.append(f"checks[{i}].status: {check.get('status')!r}, expected one of {STATUSES}")
        if check.get("name") in names:
            found.append(f"checks[{i}].name: {check.get('name')!r} twice")
        names.add(check.get("name"))
        if check.get("status") in ("error", "timeout") and not check.get("error"):
            found.append(f"checks[{i}]: status {check.get('status')} without an error")
    if isinstance(report.get("summary"), dict) and isinstance(report.get("checks"), list):
        counted = {s: sum(1 for c in report["checks"] if isinstance(c, dict) and c.get("status") == s) for s in STATUSES}
        if report["summary"] != counted:
            found.append(f"summary {report['summary']} does not count the checks {counted}")
    return found
