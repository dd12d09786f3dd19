"""The top layer: every `llava-dpa` subcommand, one module per concept. Each module parses its arguments and
calls the library below; nothing under `llava_dpa` imports this package (docs/design.md, "Layers")."""
