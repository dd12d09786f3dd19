"""`llava-dpa study`: the paper's controlled comparison in miniature (docs/study.md).

A synthetic world (world.py), pretrained parts made for it (parts.py), the paper's arms as registry entries
(arms.py), trained through LLaVA's entry points with the registry's commands (runner.py), measured with the
project's scorer and analyses (measures.py), summarised over seeds (stats.py) into a report (report.py)."""
