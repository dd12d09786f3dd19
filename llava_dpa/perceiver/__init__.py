"""The DPA perceiver: a small LLaVA-format VLM (ViT -> projector -> LM blocks) used as the vision tower.

The features handed to the target's alignment projector are the perceiver LM's hidden states at the
visual-token positions of the selected layer (default: the last, after the final norm)."""
