"""Side-by-side benchmark of our speculative decoder against HF `generate` peers (`python -m specforge_het.bench`).

methods.py  the decoding methods behind one call each (HF generate, prompt lookup, assisted, universal assisted, ours)
suite.py    prompt sets and the measurement loop (same token ids, interleaved per prompt, time/forwards/memory)
summary.py  pure functions: speed-up vs the baseline, τ, identical-output counts
report.py   rich table + header, JSON file
plot.py     PNG: speed-up and τ per method
loading.py  draft (given or shipped) and HF assistants
"""
