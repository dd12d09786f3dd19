"""The authors' release (THUMAI-Lab/Deep-Pre-Alignment) inside LLaVA: `import-official` converts its checkpoints."""
