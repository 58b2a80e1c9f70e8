"""A seventh source takes a registry entry, a mapping and a suite: no pipeline code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import polars as pl
import pytest

REPO = Path(__file__).resolve().parent.parent
BUSINESS_DATE = "2026-11-23"
UTILITIES = """
[sources.utilities]
kind = "file"
path = "utilities/arrears.csv"
format = "csv"
encoding = "utf-8"
id_column = "bill_id"
watermark = "updated_at"
suite = "utilities.standardised"
critical = false

[sources.utilities.mapping]
record_type = { const = "contract_default" }
subject_name = "customer_name"
code_raw = "customer_code"
category = "utility"
amount = "overdue_amount"
event_date = "overdue_since"
status = { const = "全部未履行" }
"""


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from credit_synthetic.generate import generate

    root = tmp_path_factory.mktemp("seventh")
    sources = root / "sources"
    generate(sources, entities=600, seed=31, end_date=date(2026, 11, 23))
    firms = pl.read_parquet(sources / "truth" / "firms.parquet").head(5)
    (sources / "utilities").mkdir()
    pl.DataFrame(
        {
            "bill_id": [f"W{i}" for i in range(5)],
            "customer_name": firms["name"],
            "customer_code": firms["uscc"],
            "utility": ["水", "电", "燃气", "电", "水"],
            "overdue_amount": ["1200.50", "88", "300", "4500", "60"],
            "overdue_since": ["2026-09-01"] * 5,
            "updated_at": ["2026-11-23 08:00:00"] * 5,
        }
    ).write_csv(sources / "utilities" / "arrears.csv")
    config = root / "sources.toml"
    config.write_text((REPO / "config" / "sources.toml").read_text("utf-8") + UTILITIES, "utf-8")
    suites = root / "expectations"
    suites.mkdir()
    suite = json.loads((REPO / "expectations" / "contract.standardised.json").read_text("utf-8"))
    suite["name"] = "utilities.standardised"
    for expectation in suite["expectations"]:
        if expectation["kwargs"].get("column") == "record_type":
            expectation["kwargs"]["value_set"] = ["contract_default"]
    (suites / "utilities.standardised.json").write_text(json.dumps(suite, ensure_ascii=False), "utf-8")
    raw_suite = {
        "name": "utilities.raw",
        "expectations": [
            {
                "type": "expect_table_columns_to_match_set",
                "meta": {"reason": "schema drift"},
                "kwargs": {
                    "column_set": ["bill_id", "customer_name", "customer_code", "overdue_amount"],
                    "exact_match": False,
                },
            },
            {
                "type": "expect_column_values_to_match_regex",
                "meta": {"reason": "type drift: amounts"},
                "kwargs": {"column": "overdue_amount", "regex": "^[0-9.]+$", "mostly": 0.9},
            },
        ],
    }
    (suites / "utilities.raw.json").write_text(json.dumps(raw_suite), "utf-8")
    env = {
        **os.environ,
        "CREDIT_SOURCES_CONFIG": str(config),
        "CREDIT_EXPECTATIONS_DIR": str(suites),
        "AIRFLOW_HOME": str(REPO),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    return {"root": root, "sources": sources, "lake": root / "lake", "firms": firms, "env": env}  # type: ignore[dict-item]


def run(code: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_seventh_source_flows_through_every_stage(deployment) -> None:
    run(
        f"from pipelines.flow import run_all; run_all({str(deployment['sources'])!r}, "
        f"{str(deployment['lake'])!r}, {BUSINESS_DATE!r})",
        deployment["env"],
    )
    lake = deployment["lake"]
    summary = json.loads((lake / "reports" / BUSINESS_DATE / "summary.json").read_text("utf-8"))
    assert summary["sources"]["utilities"]["extracted"] == 5 == summary["sources"]["utilities"]["accepted"]
    links = pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet").filter(
        pl.col("source") == "utilities"
    )
    firms = deployment["firms"]
    assert sorted(links["entity_id"]) == sorted(firms["uscc"])
    profiles = pl.read_parquet(lake / "published" / "current" / "profiles" / "*.parquet").filter(
        pl.col("uscc").is_in(firms["uscc"].implode())
    )
    assert all("utilities" in {p["source"] for p in row} for row in profiles["provenance"])
    assert (profiles["contract_cases"] >= 1).all()  # utility defaults count as contract performance


def test_seventh_source_gets_its_own_task_group(deployment) -> None:
    out = run(
        "from airflow.dag_processing.dagbag import DagBag; bag = DagBag(dag_folder='dags'); "
        "dag = bag.dags['credit_nightly']; print(sorted(t for t in dag.task_ids if t.startswith('utilities.')))",
        deployment["env"],
    )
    assert (
        "['utilities.check', 'utilities.extract', 'utilities.plan_extract', 'utilities.standardise', "
        "'utilities.validate']" in out
    )
