"""Drafts shipped with the package, one folder each (a normal draft folder, weights in bfloat16).

Load one by name: `--modeling.draft_path smollm2-135m-instruct-eagle3`. Each folder's
provenance.json and docs/results.md give the exact commands that rebuild it.
"""
