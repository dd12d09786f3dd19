"""llava-dpa: Deep Pre-Alignment for LLaVA.

Importing the package checks that the installed llava carries this project's patches, because every
LLaVA entry point delegates to code in here; running against an unpatched llava would silently train
or serve with llava 1.2.2's broken behaviour on current transformers.
"""
__version__ = "0.1.0"

from llava_dpa.patching import require_patched_llava as _require_patched_llava

if _require_patched_llava():
    # llava first: its package __init__ reads llava.model's names, which resolve lazily to
    # llava_dpa.language_models; importing in this order keeps that cycle well-founded.
    import llava  # noqa: F401
