"""The prepared GPU check (docs/gpu.md, issue 21): one run that proves the CUDA path at the paper's sizes.

Layers, imports going down only:
- `__main__` (the command `python -m llava_dpa.gpu_check`, called by scripts/gpu/check.sh)
- `runner`: the plan of checks, each with its own time limit and (on a GPU) its own process; the JSON and the log
- `checks`: the checks themselves (forward, generate, train, qlora, zero3, packing, bench, bench-packing)
- `models`: the random-weight models and the synthetic data they run on, built from `sizes`
- `processes`: child processes with a time limit, killed with whatever they started
- `sizes`: the two sizes, `full` (the paper's, from `analysis/cost.PRESETS`) and `smoke` (tiny, for a CPU)
- `schema`: the JSON's shape, checked by the runner before it writes and by the tests
"""
