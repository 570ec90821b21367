"""`python -m specforge_het.doctor`: a self-check of the GPU paths (or, with --tiny, the same checks at toy size).

It needs no download: the base is a random-weight model shaped like Llama-3.1-8B (`--tiny`: a toy Llama
with the same rope scaling and context), the draft a random EagleV3 draft. See `checks.py` for what each
check measures and when it fails.
"""
