"""Bridge to the original EAGLE (PyPI eagle-llm): side-by-side comparison runner; see README.md."""
