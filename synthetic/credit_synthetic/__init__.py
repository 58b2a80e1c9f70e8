"""Synthetic source systems for the credit-information pipeline: six departmental systems that look
like the real ones, their truth, and the demo that runs the DAG over them.

A separate distribution (``credit-synthetic``, synthetic/pyproject.toml) installed for development,
tests and benchmarks; the pipeline's own wheel (``credit-integration``) does not carry it.
"""
