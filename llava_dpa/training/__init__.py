"""Training through LLaVA's own entry points (`python -m llava.train.train_mem ...`)."""
