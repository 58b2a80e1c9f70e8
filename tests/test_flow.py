"""The stage table (pipelines/flow.py): its shape, how a stage is called, the nightly settings."""

from __future__ import annotations

import inspect
from datetime import timedelta
from pathlib import Path

import pytest

from pipelines import flow
from pipelines.flow import PER_SOURCE, STAGES, WHOLE_NIGHT, Stage, nightly_settings, run_stage

REPO = Path(__file__).resolve().parent.parent


def test_every_stage_names_a_function_that_exists() -> None:
    for stage in STAGES:
        assert callable(flow.stage_function(stage)), stage.function


def test_the_table_runs_every_source_through_its_stages_before_the_whole_night() -> None:
    assert [stage.name for stage in STAGES] == [stage.name for stage in (*PER_SOURCE, *WHOLE_NIGHT)]
    assert [stage.name for stage in PER_SOURCE] == [
        "plan_extract",
        "extract",
        "check",
        "standardise",
        "validate",
    ]
    assert [stage.name for stage in WHOLE_NIGHT][-1] == "publish"
    # only a stage that talks to a source system may be retried: the rest work on the lake
    assert [stage.name for stage in STAGES if stage.retryable] == ["plan_extract", "extract"]
    # what is cut into shards or partitions, each a task of its own
    assert {stage.name: stage.mapped_over for stage in STAGES if stage.mapped_over} == {
        "extract": "shards",
        "standardise": "shards",
        "resolve_partition": "partitions",
        "build_profiles": "shards",
    }
    # check gathers the extract shards and lists the shards to standardise; validate gathers those
    assert flow.PLANS["check"].name == "standardise" and {"check", "validate"} <= flow.GATHERS


@pytest.mark.parametrize(
    "order",
    [
        ("resolve_entities", "extract"),  # a per-source stage after a whole-night one
        ("extract", "extract", "publish"),  # a name twice
        ("extract", "check"),  # no whole-night stage
    ],
)
def test_a_table_the_dag_cannot_be_shaped_from_is_refused(order: tuple[str, ...]) -> None:
    by_name = {stage.name: stage for stage in STAGES}
    with pytest.raises(ValueError, match="pipelines.flow.STAGES"):
        flow._check_order(tuple(by_name[name] for name in order))


def test_labels_name_the_stage_and_its_source() -> None:
    by_name = {stage.name: stage for stage in STAGES}
    assert by_name["extract"].label("lending") == "extract lending"
    assert by_name["resolve_entities"].label() == "resolve entities"


def test_a_stage_missing_what_its_function_needs_says_which_stage_and_what(tmp_path: Path) -> None:
    check = next(stage for stage in STAGES if stage.name == "check")
    run = {"sources_dir": str(tmp_path), "business_date": "2026-11-23", "run_id": "r"}  # no lake_dir
    with pytest.raises(
        TypeError, match=r"stage check \(pipelines.sources.stages.check_source\) needs \['lake_dir'\]"
    ):
        run_stage(check, run, "lending")


def test_a_stage_gets_only_the_parameters_its_function_declares(tmp_path: Path) -> None:
    """What the function does not take (run_id, full_relink, the folders) is left out."""
    from pipelines.night import cutoff_for

    cutoff = Stage("cutoff", "pipelines.night.cutoff_for", per_source=False, doc="the night's cut-off")
    run = {
        "sources_dir": str(tmp_path),
        "lake_dir": str(tmp_path / "lake"),
        "business_date": "2026-11-23",
        "run_id": "r",
        "full_relink": True,
    }
    assert run_stage(cutoff, run) == cutoff_for("2026-11-23")


def test_nightly_settings_come_from_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = nightly_settings()
    assert settings.retries == 3 and settings.retry_delay == timedelta(seconds=10)
    assert settings.task_timeout("extract") == timedelta(minutes=30)
    assert settings.task_timeout("resolve_entities") == settings.task_timeouts["default"]
    own = tmp_path / "nightly.toml"
    text = (REPO / "config" / "nightly.toml").read_text("utf-8").replace("retries = 3", "retries = 5")
    own.write_text(text, "utf-8")
    monkeypatch.setenv("CREDIT_NIGHTLY_CONFIG", str(own))
    assert nightly_settings().retries == 5


def test_nightly_settings_missing_a_setting_name_the_file_and_the_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    own = tmp_path / "nightly.toml"
    text = (REPO / "config" / "nightly.toml").read_text("utf-8")
    own.write_text(text[: text.index("[retry]")], "utf-8")
    monkeypatch.setenv("CREDIT_NIGHTLY_CONFIG", str(own))
    with pytest.raises(KeyError, match=rf"{own}: no setting 'retry'"):
        nightly_settings()


def _stage(name: str, per_source: bool = False, **mapping: str) -> Stage:
    return Stage(name, "pipelines.night.cutoff_for", per_source=per_source, doc=name, **mapping)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "order",
    [
        # the first stage of its kind: nothing before it lists the items
        (
            _stage("extract", True, mapped_over="shards", item="shard"),
            _stage("check", True),
            _stage("publish"),
        ),
        # the last stage: nothing after it gathers
        (_stage("extract", True), _stage("publish"), _stage("shard", mapped_over="shards", item="shard")),
        # no parameter to take the item
        (_stage("extract", True), _stage("plan"), _stage("build", mapped_over="shards"), _stage("publish")),
        # planned by a per-source stage, gathered by a whole-night one
        (_stage("plan", True), _stage("build", True, mapped_over="shards", item="shard"), _stage("publish")),
        # two mapped stages in a row
        (
            _stage("extract", True),
            _stage("plan"),
            _stage("a", mapped_over="shards", item="shard"),
            _stage("b", mapped_over="shards", item="shard"),
            _stage("publish"),
        ),
    ],
)
def test_a_mapped_stage_needs_a_stage_that_lists_its_items_and_one_that_gathers(
    order: tuple[Stage, ...],
) -> None:
    with pytest.raises(ValueError, match="pipelines.flow.STAGES"):
        flow._check_order(order)


def test_a_mapped_stage_is_planned_by_the_stage_before_and_gathered_by_the_one_after() -> None:
    for before, stage, after in zip(STAGES, STAGES[1:], STAGES[2:], strict=False):
        if stage.mapped_over:
            assert flow.PLANS[before.name] is stage and after.name in flow.GATHERS
            assert stage.item in inspect.signature(flow.stage_function(stage)).parameters
    assert len(flow.PLANS) == len(flow.GATHERS) == sum(1 for stage in STAGES if stage.mapped_over)


def test_a_mapped_stage_called_without_its_item_says_so() -> None:
    mapped = next(stage for stage in STAGES if stage.mapped_over)
    with pytest.raises(TypeError, match=f"stage {mapped.name} is mapped over {mapped.mapped_over}"):
        run_stage(
            mapped, {"lake_dir": "x", "business_date": "2026-11-23"}, "lending" if mapped.per_source else None
        )
