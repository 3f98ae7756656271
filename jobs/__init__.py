"""One thin entrypoint per stage: read settings, fetch inputs, call influence_core, publish outputs.

Run a stage with `python -m jobs <stage> [--flag value ...]`. Heavy libraries (torch,
transformers, Kronfluence) are imported only after settings and inputs are validated, so bad
input fails in under a second.
"""
