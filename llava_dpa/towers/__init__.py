"""Vision towers with the LLaVA-NeXT interface (CLIP, SigLIP, SigLIP2, Qwen2.5-VL ViT), chosen by the tower's config
(`registry.py`); `base.py` is the interface they share."""
