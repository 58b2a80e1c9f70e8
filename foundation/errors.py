"""Errors the pipeline raises on purpose; Airflow tasks decide from the type whether to retry."""

from __future__ import annotations


class PipelineError(RuntimeError):
    """Base class: every message names the source or dataset and the problem."""


class SourceUnavailableError(PipelineError):
    """A source system is missing or unreachable (worth retrying: it may come back)."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"source '{source}' is unavailable: {problem}")
        self.source = source


class SourceFormatError(PipelineError):
    """A source delivered data the pipeline cannot read as configured (not worth retrying)."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"source '{source}' delivered unreadable data: {problem}")
        self.source = source


class DataQualityError(PipelineError):
    """A batch-level data-quality failure (a suite that cannot judge rows, a batch held back, a
    broken profile table): not worth retrying, a person must look."""


class PublishError(PipelineError):
    """A version cannot be published (incomplete, inconsistent, or the books do not balance)."""
