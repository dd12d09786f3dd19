"""Checkpoint conversions that build a tower from other checkpoints: a perceiver from a VLM (`make-perceiver`,
`reinit-perceiver-lm`) and a ViT out of a VLM (`extract-vit`)."""
