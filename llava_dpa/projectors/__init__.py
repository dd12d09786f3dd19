"""Alignment projectors beyond LLaVA's own (linear, mlpNx_gelu, identity)."""
