"""The remote code an exported folder carries: these files are copied into it and import only torch and
transformers (never llava or llava_dpa)."""
