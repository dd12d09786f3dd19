"""`llava-dpa export-hf`: checkpoints as transformers-native folders (remote code in `remote/`).

Only llava_dpa.commands imports this package."""
