"""Publish: versions, watermarks, the reconciliation of the books, the run report, the data dictionary."""
