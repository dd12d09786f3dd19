"""The paper's runs: a typed registry (`paper.py`), cluster settings (`settings.py`), the one renderer of
LLaVA training commands (`render.py`), the runner (`runner.py`) and `llava-dpa recipe` (`commands.py`)."""
