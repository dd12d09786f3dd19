"""Everything that connects llava_dpa to haotian-liu/LLaVA 1.2.2 (llava-torch 1.2.2.post1).

The diffs in the repository's `patches/` folder make LLaVA's modules delegate to the functions here.
"""
