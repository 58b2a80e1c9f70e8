"""Validation with Great Expectations suites kept as JSON in expectations/.

The suites are the single source of truth for what a good row is. Row-level failures send the row
to quarantine with a readable reason (the expectation's ``meta.reason`` plus the offending value);
failures GX cannot pin on rows (a missing column, say) fail the whole batch with DataQualityError.
Polars does the data work; pandas appears only at the GX boundary, with just the needed columns.

A night validates only the rows its extract pulled (new and changed records since the last
published night): every other row of the accepted snapshot passed the same suites the night it
arrived, and the upsert that builds tonight's snapshot does not validate it again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from foundation.errors import DataQualityError
from foundation.lake import Lake, atomic_path, write_parquet
from foundation.schema import CANONICAL_COLUMNS, CANONICAL_SCHEMA, NUMBER_TEXT, number_ranges
from foundation.settings import EXPECTATIONS_DIR, expectation_dirs
from pipelines.quality.data_docs import RESULTS_DIR
from pipelines.sources.registry import SourceConfig, load_sources

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
log = logging.getLogger(__name__)
# GX logs an INFO line per public-API function it registers on import ("Skipping registering ..."),
# most of a validate task's log; our logs keep GX's warnings and errors only.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
#: what validating imports on first use, not when this module is imported (Great Expectations'
#: import alone costs about 5 CPU s): a process that forks many task processes imports it once
#: beforehand (``pipelines.flow.preload``, in a Celery worker)
SLOW_IMPORTS = ("great_expectations",)
ROW_ID = "_row"
#: suite parameters every suite may use: the number grammar the raw suites check type drift with
#: is the one standardisation reads numbers with
DEFAULT_PARAMETERS: dict[str, Any] = {"number_text": NUMBER_TEXT}


@dataclass
class SuiteOutcome:
    success: bool
    row_failures: pl.DataFrame  # ROW_ID, expectation, reason
    batch_failures: list[str] = field(default_factory=list)
    statistics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataDocs:
    """Where a run keeps its validation results for the offline Data Docs site
    (``pipelines.quality.data_docs``): under ``root`` (``LAKE/reports/<date>/gx``), in the layout of a
    file-backed GX project's validations store, each result under ``run_name`` (the business date)."""

    root: Path
    run_name: str


#: expectations that read only the table's column names, not its values
SCHEMA_EXPECTATIONS = frozenset(
    {
        "expect_table_columns_to_match_set",
        "expect_table_columns_to_match_ordered_list",
        "expect_table_column_count_to_equal",
        "expect_table_column_count_to_be_between",
        "expect_column_to_exist",
    }
)


class SuiteRunner:
    """Validates frames with the suites through one in-memory GX Data Context of its own, keeping
    every result for the Data Docs site when given ``docs``. A stage makes one and passes it to what
    it validates (the context is built on first use, each suite loaded once); nothing is shared
    between runners, so two runs in one process cannot see each other's results.

    No file-backed GX project: it re-reads its YAML on every access to its settings and rewrites it
    when a data source is registered, so the side-by-side validate tasks of a night had to take
    turns on it. A result is written as GX's store writes it (the same JSON, the same place) by the
    task that made it, each to a file of its own."""

    def __init__(self, docs: DataDocs | None = None) -> None:
        self.docs = docs
        self._context: Any = None
        self._batch_definition: Any = None
        self._suites: dict[str, Any] = {}

    @property
    def context(self) -> Any:
        """The GX Data Context (ephemeral: nothing of it outlives the task but the stored results)."""
        if self._context is None:
            import great_expectations as gx

            context = gx.get_context(mode="ephemeral")
            # GX draws a progress bar per validation; nightly logs should not fill up with them
            context.variables.progress_bars = {"globally": False, "metric_calculations": False}
            self._context = context
        return self._context

    @property
    def batch_definition(self) -> Any:
        """A whole-dataframe batch definition: each validation passes its frame as a batch parameter."""
        if self._batch_definition is None:
            source = self.context.data_sources.add_or_update_pandas("credit")
            asset = source.add_dataframe_asset("frame")
            self._batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        return self._batch_definition

    def suite(self, name: str, expectations_dir: Path = EXPECTATIONS_DIR) -> Any:
        """The suite ``name`` from its JSON file, with the derived range checks (``range_expectations``)."""
        if name not in self._suites:
            import great_expectations as gx

            spec = read_suite(name, expectations_dir)
            expectations = [*spec["expectations"], *range_expectations(spec["name"])]
            self._suites[name] = gx.ExpectationSuite(
                name=spec["name"], expectations=expectations, meta=spec.get("meta")
            )
        return self._suites[name]

    def validate(
        self,
        suite: Any,
        frame: Any,
        result_format: dict[str, Any],
        parameters: dict[str, Any],
        schema_frame: Any = None,
    ) -> Any:
        """One GX validation of ``suite``; with ``schema_frame`` (the table's columns, no rows) the
        schema expectations are judged on it and the rest on ``frame``, each group of expectations
        on only the columns it reads (GX filters the whole batch for every column expectation), the
        groups' results merged into one suite result. With Data Docs on, the result is stored."""
        import great_expectations as gx
        from great_expectations.execution_engine import pandas_execution_engine
        from great_expectations.validator.v1_validator import Validator

        # GX fingerprints every pandas batch under 1 GB with an md5 over hash_pandas_object (4 s for
        # 3M rows); the fingerprint is batch metadata only, and GX already skips it for larger
        # frames. GX offers no setting for it, so its module's threshold is set (no private member).
        pandas_execution_engine.HASH_THRESHOLD = 0
        configs = suite.expectation_configurations
        on_schema = [schema_frame is not None and c.type in SCHEMA_EXPECTATIONS for c in configs]
        ids = list(result_format.get("unexpected_index_column_names") or [])
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for index, (config, schema_only) in enumerate(zip(configs, on_schema, strict=True)):
            if schema_only:
                groups.setdefault(None, []).append(index)
            else:
                read = _expectation_columns(config.kwargs)
                key = tuple(c for c in frame.columns if c in read or c in ids)
                groups.setdefault(key, []).append(index)
        results: list[Any] = [None] * len(configs)
        judged: Any = None
        for columns, indexes in groups.items():
            data = schema_frame if columns is None else frame[list(columns)]
            part = gx.ExpectationSuite(name=suite.name, expectations=[configs[i] for i in indexes])
            # one batch per group, as GX's ValidationDefinition makes it (Batch.validate builds two)
            validator = Validator(
                batch_definition=self.batch_definition,
                batch_parameters={"dataframe": data},
                result_format=result_format,
            )
            judged = validator.validate_expectation_suite(
                part, expectation_parameters={**DEFAULT_PARAMETERS, **parameters}
            )
            for index, outcome in zip(indexes, judged.results, strict=True):
                results[index] = outcome
        if judged is None:  # a suite without expectations: judged on the columns alone
            validator = Validator(
                batch_definition=self.batch_definition,
                batch_parameters={"dataframe": schema_frame if schema_frame is not None else frame},
                result_format=result_format,
            )
            judged = validator.validate_expectation_suite(suite)
        result = _merged(suite.name, results, judged)
        if self.docs is not None:
            self._store(result)
        return result

    def _store(self, result: Any) -> None:
        """Keep ``result`` under the run's name where a file-backed project's validations store keeps
        it (``<suite as folders>/<run name>/<run time>/<batch id>.json``), written atomically."""
        from great_expectations.core.run_identifier import RunIdentifier

        assert self.docs is not None
        run_id = RunIdentifier(run_name=self.docs.run_name, run_time=datetime.now(UTC))
        result.meta.update(
            run_id=run_id, validation_time=run_id.run_time, batch_parameters={"dataframe": "<dataframe>"}
        )
        target = (
            self.docs.root
            / RESULTS_DIR
            / Path(*result.suite_name.split("."))
            / self.docs.run_name
            / run_id.run_time.strftime("%Y%m%dT%H%M%S.%fZ")
            / f"{result.batch_id}.json"
        )
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(result.to_json_dict(), indent=2), "utf-8")

    def run(
        self,
        frame: pl.DataFrame,
        suite_name: str,
        id_column: str = ROW_ID,
        parameters: dict[str, Any] | None = None,
    ) -> SuiteOutcome:
        """``run_suite`` through this runner's context."""
        return run_suite(frame, suite_name, id_column, parameters, runner=self)


def _merged(suite_name: str, results: list[Any], last: Any) -> Any:
    """The groups' results as one suite result, as GX writes one (statistics over all of them; the
    batch metadata of the last group's batch, all of one frame)."""
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult

    evaluated = len(results)
    successful = sum(bool(r.success) for r in results)
    return ExpectationSuiteValidationResult(
        results=results,
        success=successful == evaluated,
        suite_name=suite_name,
        statistics={
            "evaluated_expectations": evaluated,
            "successful_expectations": successful,
            "unsuccessful_expectations": evaluated - successful,
            "success_percent": successful / evaluated * 100 if evaluated else None,  # as GX computes it
        },
        meta=last.meta,
        batch_id=last.batch_id,
    )


def read_suite(name: str, expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    """A suite's JSON as written: CREDIT_EXPECTATIONS_DIR's suites first (a deployment's own), then ours."""
    folders = expectation_dirs(expectations_dir)
    for folder in folders:
        path = folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text("utf-8"))
    raise DataQualityError(f"expectation suite '{name}' not found in {[str(f) for f in folders]}")


def load_suite(name: str, expectations_dir: Path = EXPECTATIONS_DIR) -> Any:
    """The suite ``name`` as GX runs it (its JSON with the derived range checks), in memory."""
    return SuiteRunner().suite(name, expectations_dir)


def range_expectations(suite_name: str) -> list[dict[str, Any]]:
    """The range checks of a source's standardised suite, derived from the ranges of the number
    columns its mapping fills (schema.NUMBER_RANGES, narrowed by the source's ``ranges`` in
    config/sources.toml): never written into the suite's JSON, so there is one definition."""

    for source in load_sources().values():
        if source.suite != suite_name:
            continue
        ranges = number_ranges(source.mapping, source.options.get("ranges"), source.name)
        return [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": column, "min_value": low, "max_value": high},
                "meta": {
                    "reason": f"{column} outside its range [{_bound(low)}, {_bound(high)}]",
                    "derived_from": f"the range of '{column}' (foundation/schema.py NUMBER_RANGES, "
                    f"config/sources.toml [sources.{source.name}.ranges])",
                },
            }
            for column, (low, high) in ranges.items()
        ]
    return []


def _bound(value: float | None) -> str:
    return "open" if value is None else f"{value:,.15g}"


def _expectation_columns(kwargs: dict[str, Any]) -> set[str]:
    """The columns one expectation reads, its row condition included."""
    needed: set[str] = set()
    for key in ("column", "column_A", "column_B"):
        if kwargs.get(key):
            needed.add(kwargs[key])
    needed.update(kwargs.get("column_list") or [])
    condition = kwargs.get("row_condition")
    if condition:
        text = condition if isinstance(condition, str) else json.dumps(condition)
        needed.update(c for c in CANONICAL_COLUMNS if c in text)
    return needed


def _columns_needed(suite: Any) -> set[str]:
    return set().union(*(_expectation_columns(e.configuration.kwargs) for e in suite.expectations))


def _reason(config: Any, value: Any) -> str:
    reason = (config.meta or {}).get("reason") or config.type.replace("_", " ")
    column = config.kwargs.get("column")
    shown = "null" if value is None else str(value)[:60]
    return f"{reason} ({column}={shown})" if column else reason


#: the dates pandas can hold as datetime64[ns]
_NS_DATES = (date(1677, 9, 22), date(2262, 4, 11))


def _to_pandas_for_gx(frame: pl.DataFrame) -> Any:
    """``frame`` as pandas, Date columns as datetime64[ns] where they fit: GX compares only
    nanosecond datetimes vectorised and any other date unit row by row in Python (9 s of a 30 s
    validation of 1.9M loans). Decimal money goes as float64: pandas holds decimals as Python
    objects (or Arrow arrays) that GX checks row by row, minutes for 20,000 profiles instead of
    a second; the exact sums are the books' job (``pipelines.publish.reconciliation.reconcile``)."""
    casts = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Decimal):
            casts.append(pl.col(name).cast(pl.Float64))
        elif dtype == pl.Date:
            low, high = frame[name].min(), frame[name].max()
            if low is None or (_NS_DATES[0] <= low and high <= _NS_DATES[1]):
                casts.append(pl.col(name).cast(pl.Datetime("ns")))
    return frame.with_columns(casts).to_pandas()


def run_suite(
    frame: pl.DataFrame,
    suite_name: str,
    id_column: str = ROW_ID,
    parameters: dict[str, Any] | None = None,
    runner: SuiteRunner | None = None,
) -> SuiteOutcome:
    """Validate ``frame`` with a suite; row failures carry ``id_column`` values. ``parameters``
    fill the suite's ``{"$PARAMETER": name}`` values (e.g. the business date's end). ``runner``:
    the stage's (its Data Docs project), else one in memory for this call."""
    runner = runner or SuiteRunner()
    suite = runner.suite(suite_name)
    needed = _columns_needed(suite)
    columns = [c for c in frame.columns if c in needed]
    pandas_frame = _to_pandas_for_gx(frame.select(*dict.fromkeys([id_column, *columns])))
    dates = {name for name, dtype in frame.schema.items() if dtype == pl.Date}
    schema_frame = None
    if any(e.configuration.type in SCHEMA_EXPECTATIONS for e in suite.expectations):
        schema_frame = frame.head(0).to_pandas()
    result = runner.validate(
        suite,
        pandas_frame,
        {"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]},
        parameters or {},
        schema_frame=schema_frame,
    )
    ids: list[Any] = []
    names: list[str] = []
    reasons: list[str] = []
    batch: list[str] = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        label = f"{config.type}({kwargs.get('column', '')})"
        unexpected = (item.result or {}).get("unexpected_index_list")
        if item.exception_info and item.exception_info.get("raised_exception"):
            batch.append(f"{label}: {item.exception_info.get('exception_message')}")
        elif unexpected:
            column = kwargs.get("column")
            for entry in unexpected:
                ids.append(entry[id_column])
                names.append(label)
                value = entry.get(column)
                if column in dates and hasattr(value, "date"):
                    value = value.date()  # a Date column GX saw as datetime64[ns]
                reasons.append(_reason(config, value))
        else:
            observed = (item.result or {}).get("observed_value")
            reason = (config.meta or {}).get("reason") or label
            batch.append(f"{label}: {reason}; observed {observed}")
    failures = pl.DataFrame(
        {id_column: ids, "expectation": names, "reason": reasons},
        schema={id_column: frame.schema[id_column], "expectation": pl.String, "reason": pl.String},
    )
    stats = dict(result.statistics) if hasattr(result, "statistics") else {}
    return SuiteOutcome(
        success=bool(result.success), row_failures=failures, batch_failures=batch, statistics=stats
    )


Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)
#: quarantine = the canonical columns (null where the row never got that far) plus where and why
QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    **{name: dtype for name, dtype in CANONICAL_SCHEMA.items()},
    "stage": pl.String(),  # extract (unreadable line), batch (source held back) or validate
    "line": pl.Int64(),  # the file line, for rows that never became records
    "original": pl.String(),  # the row as the source delivered it (JSON object or raw line text)
    "failed_expectations": pl.List(pl.String()),
    "reason": pl.String(),
}


def conform_quarantine(frame: Frame) -> Frame:
    """``frame`` in the quarantine layout (eager or lazy, as given)."""
    columns = frame.collect_schema().names()
    return frame.select(
        [(pl.col(n) if n in columns else pl.lit(None)).cast(t).alias(n) for n, t in QUARANTINE_SCHEMA.items()]
    )


#: a raw row as one JSON object, exactly as the source delivered it
ORIGINAL = pl.struct(pl.all()).struct.json_encode().alias("original")


def original_values(raw: pl.DataFrame) -> pl.Series:
    """Each raw row as one JSON object, exactly as the source delivered it."""
    if not raw.width:
        return pl.Series("original", [None] * raw.height, dtype=pl.String)
    return raw.select(ORIGINAL).to_series()


def original_rows(raw: pl.LazyFrame) -> pl.LazyFrame:
    """``original_values`` of a lazy frame, as its column "original" (a frame without columns, a
    delivery that could not be read, holds no rows)."""
    if not raw.collect_schema().len():
        return pl.LazyFrame(schema={"original": pl.String})
    return raw.select(ORIGINAL)


def rejects_to_quarantine(source: str, rejects: pl.DataFrame, stage: str = "extract") -> pl.DataFrame:
    """Unreadable lines (``line``, ``original``, ``reason``) in the quarantine layout."""
    return conform_quarantine(
        rejects.with_columns(
            pl.lit(source).alias("source"),
            pl.lit(stage).alias("stage"),
            pl.concat_list(pl.lit(f"{stage}:readable")).alias("failed_expectations"),
        )
    )


def validate_source(
    source: str,
    staged_path: Path,
    accepted_path: Path,
    quarantine_path: Path,
    raw_path: Path | None = None,
    rejects: pl.DataFrame | None = None,
    parameters: dict[str, Any] | None = None,
    runner: SuiteRunner | None = None,
) -> dict[str, Any]:
    """Split one source's standardised rows into accepted and quarantined (with reasons and the
    row's original values from ``raw_path``); ``rejects`` (unreadable lines) join the quarantine.
    ``runner``: the stage's suite runner (its Data Docs project), else one in memory."""
    staged = pl.read_parquet(staged_path)
    missing = [c for c in CANONICAL_COLUMNS if c not in staged.columns]
    if missing:
        raise DataQualityError(f"source '{source}': standardised data lacks canonical columns {missing}")
    frame = staged.with_row_index(ROW_ID)

    configured = load_sources().get(source)
    if parameters is None:  # ad-hoc validation: nothing may lie after today
        tomorrow = datetime.combine(date.today() + timedelta(days=1), datetime.min.time())
        parameters = {"business_day_end": tomorrow}
    outcome = run_suite(
        frame,
        configured.suite if configured else f"{source}.standardised",
        parameters=parameters,
        runner=runner,
    )
    if outcome.batch_failures:
        raise DataQualityError(
            f"source '{source}' failed batch-level expectations: " + "; ".join(outcome.batch_failures)
        )
    failures = outcome.row_failures
    # A duplicated record id: the latest version is kept, the others are quarantined.
    duplicate = pl.col("expectation").str.starts_with("expect_column_values_to_be_unique(source_record_id)")
    dup_rows = failures.filter(duplicate)[ROW_ID]
    if dup_rows.len():
        keep = (
            frame.filter(pl.col(ROW_ID).is_in(dup_rows.implode()))
            .sort(["updated_at", ROW_ID], descending=[True, False], nulls_last=True)
            .unique("source_record_id", keep="first")[ROW_ID]
        )
        failures = failures.filter(~(duplicate & pl.col(ROW_ID).is_in(keep.implode())))
    per_row = failures.group_by(ROW_ID).agg(
        pl.col("expectation").unique().sort().alias("failed_expectations"),
        pl.col("reason").unique().sort().str.join("; ").alias("reason"),
    )
    quarantined = frame.join(per_row, on=ROW_ID, how="inner").sort(ROW_ID)
    # sorted by record id: the snapshot order, so a first run's changes are its snapshot as they are
    accepted = frame.join(per_row, on=ROW_ID, how="anti").sort("source_record_id", ROW_ID).drop(ROW_ID)
    if raw_path is not None and quarantined.height:
        raw = (
            pl.scan_parquet(raw_path)
            .with_row_index(ROW_ID)
            .join(quarantined.lazy().select(ROW_ID), on=ROW_ID, how="semi")
            .sort(ROW_ID)
            .collect()
        )
        quarantined = quarantined.with_columns(original_values(raw.drop(ROW_ID)))
    quarantined = conform_quarantine(quarantined.drop(ROW_ID).with_columns(pl.lit("validate").alias("stage")))
    if rejects is not None and rejects.height:
        quarantined = pl.concat([rejects_to_quarantine(source, rejects), quarantined])
    write_parquet(accepted, accepted_path)
    write_parquet(quarantined, quarantine_path)
    if quarantined.height:
        top = quarantined["reason"].value_counts(sort=True).head(3)
        log.warning(
            "source %s: %d of %d rows quarantined; top reasons: %s",
            source,
            quarantined.height,
            quarantined.height + accepted.height,
            top.rows(),
        )
    return {
        "source": source,
        "extracted": staged.height + (rejects.height if rejects is not None else 0),
        "accepted": accepted.height,
        "quarantined": quarantined.height,
        "accepted_path": str(accepted_path),
        "quarantine_path": str(quarantine_path),
    }


def totals_parameters(totals: dict[str, float], tolerance: dict[str, float]) -> dict[str, float]:
    """``<column>_min`` / ``<column>_max`` for the profiles suite's reconciliation expectations."""
    out: dict[str, float] = {}
    for column, value in totals.items():
        out[f"{column}_min"] = float(value) - tolerance.get(column, 0.0)
        out[f"{column}_max"] = float(value) + tolerance.get(column, 0.0)
    return out


def validate_profiles(
    profiles_path: Path, totals: dict[str, float] | None = None, runner: SuiteRunner | None = None
) -> dict[str, Any]:
    """Fail the run on any broken profile, naming the expectations and up to 10 firms.

    ``totals``: per profile column, what the accepted records add up to; the suite checks that the
    profiles' sums reconcile with them (money to the fen). Without them (a profile
    table checked on its own) the sums are only checked to exist."""
    profiles = pl.read_parquet(profiles_path)
    frame = profiles.with_row_index(ROW_ID)
    reconciled = (
        "record_count",
        "lending_loans",
        "lending_amount",
        "lending_balance",
        "tax_arrears_balance",
        "contract_cases",
    )
    own = {c: float(profiles[c].fill_null(0).sum()) if c in profiles.columns else 0.0 for c in reconciled}
    totals = {**own, **(totals or {})}
    # money is exact (decimal); GX sums it as float64, off by far less than half a fen
    tolerance = {c: 0.005 for c, dtype in profiles.schema.items() if isinstance(dtype, pl.Decimal)}
    outcome = run_suite(frame, "profiles", parameters=totals_parameters(totals, tolerance), runner=runner)
    if outcome.batch_failures or outcome.row_failures.height:
        bad = outcome.row_failures.join(frame.select(ROW_ID, "entity_id"), on=ROW_ID, how="left")
        examples = bad["entity_id"].unique(maintain_order=True).head(10).to_list()
        reasons = bad["reason"].unique(maintain_order=True).head(5).to_list() + outcome.batch_failures
        raise DataQualityError(
            f"profiles failed validation ({bad.height} row failures): {'; '.join(map(str, reasons))}; "
            f"entity ids: {examples}"
        )
    return {"profiles": profiles.height, "validated": True}


#: rows of the raw batch the raw suite looks at (schema and type drift show in any sample)
RAW_SAMPLE_ROWS = 20_000


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Raw values as the source wrote them, as text (the raw suite checks their shape)."""
    return frame.select(
        [
            (
                pl.col(name).list.eval(pl.element().cast(pl.String)).list.join(",")
                if isinstance(dtype, pl.List)
                else pl.col(name).cast(pl.String)
            ).alias(name)
            for name, dtype in frame.schema.items()
        ]
    )


def raw_suite_problems(source: SourceConfig, raw_path: Path, runner: SuiteRunner | None = None) -> list[str]:
    """Failures of the source's raw suite on a sample of the batch, as readable sentences
    (``runner``: the stage's suite runner, else one in memory)."""
    suite = source.raw_suite or f"{source.name}.raw"
    sample = _as_text(pl.scan_parquet(raw_path).head(RAW_SAMPLE_ROWS).collect())
    outcome = run_suite(sample.with_row_index(ROW_ID), suite, runner=runner)
    problems = list(outcome.batch_failures)
    if outcome.row_failures.height:  # "mostly" expectations report rows only when they fail as a whole
        by_reason = (  # most frequent first, then by reason: the same sentence every time
            outcome.row_failures.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
        )
        problems += [f"{r} ({n} of {sample.height} sampled rows)" for r, n in by_reason.iter_rows()]
    return problems


def stage_runner(lake: Lake) -> SuiteRunner:
    """A suite runner keeping this run's GX validation results (for Data Docs) under LAKE/reports/<date>/gx."""
    return SuiteRunner(DataDocs(lake.reports / "gx", run_name=lake.business_date))
