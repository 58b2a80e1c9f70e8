"""Benchmark: generate N firms, then run every pipeline stage in its own process (as Airflow does),
printing wall time, records per second and peak memory (RSS) per stage.

Each stage process is forked from one worker process that imported the stages and Great
Expectations once, as the repository's executors run tasks (airflow.cfg's PreloadingLocalExecutor,
pipelines/executor.py; the Celery workers, deploy/worker_preload.py); ``--fresh-processes`` starts a
new interpreter per stage instead, as a plain LocalExecutor would (each pays its imports).

    .venv/bin/python bench/bench_pipeline.py --entities 100000
    .venv/bin/python bench/bench_pipeline.py --entities 100000 --incremental-nights 3

With ``--incremental-nights N`` the data are spread over ``--days`` days (a night then changes about
1/days of the records); one lake runs the night N days before ``--date`` in full and the N nights
after it incrementally, another runs ``--date`` from scratch (the full rebuild). Both are timed per
stage, and the two lakes' links are compared record by record.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.flow import Stage

ROOT = Path(__file__).resolve().parent.parent
STAGE_RUNNER = """
import json, resource, sys, time
name, args = sys.argv[1], json.loads(sys.argv[2])
start = time.perf_counter()
gx_before = "great_expectations" in sys.modules
if name == "generate":
    from pathlib import Path
    from datetime import date
    from credit_synthetic.generate import generate
    result = generate(
        Path(args[0]), entities=args[1], seed=args[2], end_date=date.fromisoformat(args[3]), days=args[4]
    )
else:  # a stage of pipelines.flow.STAGES, called as the DAG's task and credit run call it
    from pipelines import flow
    stage = next(stage for stage in flow.STAGES if stage.name == name)
    result = flow.run_stage(stage, *args)  # (the night, the source or None, a mapped stage's item)
# with the processes the stage started and waited for (its pools' workers): their CPU seconds
# add up; the peak is the largest single process's (ru_maxrss of the children is the largest one's)
usage, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": time.perf_counter() - start,
                  "cpu_seconds": usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime,
                  "peak_mb": max(usage.ru_maxrss, children.ru_maxrss) / 1024,
                  "great_expectations": not gx_before and "great_expectations" in sys.modules,
                  "result": result}, default=str))
"""


#: the worker the stage processes fork from (started by the first stage): it imports the stages and
#: Great Expectations (``pipelines.flow.preload``), then, per line of JSON on its input (the stage,
#: its arguments, a file for its output and one for its errors), forks a process that runs
#: STAGE_RUNNER writing to those files, and answers with the process's exit code
STAGE_WORKER = """
import json, os, sys, traceback
from pipelines.flow import preload
preload()
runner = compile(sys.argv[1], "<stage>", "exec")
print("ready", flush=True)
for line in sys.stdin:
    name, args, out, err = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = ["stage", name, json.dumps(args)]
            exec(runner, {"__name__": "__stage__"})
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class StageWorker:
    """The forking worker (STAGE_WORKER) in a process of its own, started once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-c", STAGE_WORKER, STAGE_RUNNER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit("the stage worker did not start")

    def run(self, name: str, args: tuple[object, ...]) -> subprocess.CompletedProcess[str]:
        out, err = self.folder / "stage.out", self.folder / "stage.err"
        self.process.stdin.write(json.dumps([name, args, str(out), str(err)], default=str) + "\n")
        self.process.stdin.flush()
        code = int(json.loads(self.process.stdout.readline()))
        return subprocess.CompletedProcess(name, code, out.read_text("utf-8"), err.read_text("utf-8"))


#: the worker the stages fork from; empty: each stage in a fresh interpreter (``--fresh-processes``)
WORKER: list[StageWorker] = []
#: the file in the work directory a running benchmark holds locked (``hold_workdir``)
LOCK_FILE = ".benchmark.lock"


def hold_workdir(workdir: Path) -> IO[str]:
    """Lock ``workdir`` for this run (kept until the process ends, however it ends): a second
    benchmark on the same directory would share its stage worker's files and its lakes, and both
    would fail or measure each other. Refused with the directory named."""
    import fcntl

    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / LOCK_FILE).open("a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SystemExit(
            f"another benchmark is running in {workdir}: wait for it or pass another --workdir"
        ) from None
    return handle


def run_stage(name: str, *args: object) -> dict:
    """``generate`` (out dir, entities, seed, end date, days) or a stage of the stage table (the
    night's values, the source or None, and for a mapped stage its item) in a process of its own,
    forked from the stage worker (``--fresh-processes``: a new interpreter): seconds, CPU seconds and
    peak MB (with those of the workers it started), whether it imported Great Expectations itself and
    the stage's result."""
    if WORKER:
        out = WORKER[0].run(name, args)
        if out.returncode != 0:
            raise SystemExit(f"stage {name} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    out = subprocess.run(
        [sys.executable, "-c", STAGE_RUNNER, name, json.dumps(args)], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"stage {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: (stage, seconds, records, peak MB, CPU seconds, processes, processes that imported Great Expectations)
Row = tuple[str, float, int, float, float, int, int]
#: the count a stage's result reports, in this order of preference
COUNTED = ("changed_records", "profiles", "rows", "staged", "extracted")


def run_night(sources: Path, lake: Path, day: str, full_relink: bool = False) -> list[Row]:
    """Every stage of one night, each in its own process: (stage, seconds, records, peak MB, CPU
    seconds of the whole process, start-up included) rows. CPU seconds hardly depend on what else
    runs on the machine, wall seconds do."""
    from pipelines.flow import PER_SOURCE, WHOLE_NIGHT
    from pipelines.sources.registry import source_names

    night = {
        "sources_dir": str(sources),
        "lake_dir": str(lake),
        "business_date": day,
        "run_id": f"bench-{day}",
        "full_relink": full_relink,
    }
    rows: list[Row] = []
    for source in source_names():
        rows += run_stages(PER_SOURCE, night, source)
    return rows + run_stages(WHOLE_NIGHT, night, None)


def run_stages(stages: Sequence[Stage], night: dict[str, Any], source: str | None) -> list[Row]:
    """``stages`` in order for ``source`` (None: the whole night), each in a process of its own, a
    mapped stage once per item its planning stage listed (as the DAG maps it): one row per stage,
    its items' seconds, records and CPU seconds summed and their largest peak."""
    rows: list[Row] = []
    before: dict[str, Any] = {}
    for stage in stages:
        if stage.mapped_over:
            runs = [run_stage(stage.name, night, source, item) for item in before[stage.mapped_over]]
        else:
            runs = [run_stage(stage.name, night, source)]
            before = runs[0]["result"]
        if stage.name == "check":  # a batch check reports problems, the rows are extract's
            report = (
                Path(night["lake_dir"]) / "reports" / night["business_date"] / "extract" / f"{source}.json"
            )
            n = json.loads(report.read_text())["rows"]
        else:
            n = sum(next((r["result"][key] for key in COUNTED if r["result"].get(key)), 0) for r in runs)
        rows.append(
            (
                stage.label(source),
                sum(r["seconds"] for r in runs),
                int(n),
                max((r["peak_mb"] for r in runs), default=0.0),
                sum(r["cpu_seconds"] for r in runs),
                len(runs),
                sum(bool(r["great_expectations"]) for r in runs),
            )
        )
    return rows


def agreement(a: Path, b: Path) -> dict[str, float]:
    """How far two lakes' published links agree: the share of records with the same entity id, and
    the pairwise scores of one partition against the other (ids aside)."""
    import polars as pl

    from entity_resolution.evaluate import evaluate

    first = pl.read_parquet(a / "published" / "current" / "links" / "*.parquet")
    second = pl.read_parquet(b / "published" / "current" / "links" / "*.parquet")
    both = first.join(second, on=["source", "source_record_id"], suffix="_full")
    scores = evaluate(first, second.rename({"entity_id": "entity_key"}))
    return {
        "records": both.height,
        "same_entity_id": round(float((both["entity_id"] == both["entity_id_full"]).mean()), 6),
        "records_differing": int((both["entity_id"] != both["entity_id_full"]).sum()),
        "pairwise_precision": scores.pairwise_precision,
        "pairwise_recall": scores.pairwise_recall,
        "pairwise_f1": scores.pairwise_f1,
    }


def print_rows(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"{'stage':<28}{'seconds':>9}{'records':>12}{'records/s':>12}{'peak MB':>10}{'CPU s':>9}")
    for name, seconds, n, peak, cpu, *_ in rows:
        rate = n / seconds if seconds and n else 0
        print(f"{name:<28}{seconds:>9.1f}{n:>12,}{rate:>12,.0f}{peak:>10,.0f}{cpu:>9.1f}")
    print(f"{'all stages':<28}{sum(r[1] for r in rows):>9.1f}{'':>34}{sum(r[4] for r in rows):>9.1f}")


def incremental(args: argparse.Namespace, sources: Path, lake: Path, rows: list, records: int) -> int:
    """A chain of incremental nights ending at --date against a full rebuild of --date."""
    import os
    import tomllib
    from datetime import date, timedelta

    from foundation.settings import config_env, config_path

    # the chain is incremental every night (no weekly full re-link inside it)
    settings = tomllib.loads(config_path("resolution.toml").read_text("utf-8"))
    config = args.workdir / "resolution-no-weekly.toml"
    config.write_text(f'spec = "{settings["spec"]}"\nfull_relink_weekdays = []\n', "utf-8")
    os.environ[config_env("resolution.toml")] = str(config)
    end = date.fromisoformat(args.date)
    nights = [(end - timedelta(days=k)).isoformat() for k in range(args.incremental_nights, -1, -1)]
    from pipelines.night import REGISTRY_DIR, REGISTRY_VERSION_FILE

    published_first = lake / REGISTRY_DIR / nights[0] / REGISTRY_VERSION_FILE
    if args.reuse_lake and published_first.exists():
        first: list[Row] = []  # the kept lake's first night stands; the nights after it run again
        print(f"reusing {lake}: its night {nights[0]} is published; the nights after it run again")
    else:
        shutil.rmtree(lake, ignore_errors=True)
        first = run_night(sources, lake, nights[0])
    chain = []
    for day in nights[1:]:
        start = time.perf_counter()
        chain.append((day, run_night(sources, lake, day), time.perf_counter() - start))
    full_lake = lake.with_name(lake.name + "-full")
    shutil.rmtree(full_lake, ignore_errors=True)
    start = time.perf_counter()
    full = run_night(sources, full_lake, args.date)
    full_wall = time.perf_counter() - start
    last_day, last, last_wall = chain[-1]
    resolution = json.loads((lake / "reports" / last_day / "resolution" / "entities.json").read_text())
    print(f"\nbenchmark: {args.entities:,} firms, {records:,} source records over {args.days} days, 2 cores")
    print(f"machine reference (20M-addition Python loop): {machine_reference():.2f} s")
    if first:
        print_rows(f"first night {nights[0]} (full)", first)
    for day, night, wall in chain:
        print(f"incremental night {day}: {sum(r[1] for r in night):.1f} s in stages, {wall:.1f} s wall")
    print_rows(
        f"last incremental night {last_day}: {resolution['changed_records']:,} of {resolution['records']:,} "
        f"records new or changed ({resolution['changed_records'] / resolution['records']:.1%}), "
        f"{resolution['touched_entities']:,} entities touched",
        last,
    )
    print_rows(f"full rebuild of {args.date} (a fresh lake)", full)
    incremental_seconds, full_seconds = sum(r[1] for r in last), sum(r[1] for r in full)
    incremental_cpu, full_cpu = sum(r[4] for r in last), sum(r[4] for r in full)
    print(
        f"\nwhole pipeline, stage seconds: incremental {incremental_seconds:.1f} s, full {full_seconds:.1f} s "
        f"({incremental_seconds / full_seconds:.1%}); wall incl. process start-up: {last_wall:.1f} s vs "
        f"{full_wall:.1f} s ({last_wall / full_wall:.1%}); CPU seconds incl. start-up: {incremental_cpu:.1f} "
        f"vs {full_cpu:.1f} ({incremental_cpu / full_cpu:.1%})"
    )
    from pipelines.flow import STAGES
    from pipelines.sources.registry import source_names

    for stage in STAGES:
        labels = {stage.label(source) for source in source_names()} if stage.per_source else {stage.label()}
        mine = [r for r in last if r[0] in labels]
        theirs = [r for r in full if r[0] in labels]
        print(
            f"  {stage.label() + (' (all sources)' if stage.per_source else ''):<30}"
            f"{sum(r[1] for r in mine):>7.1f} s vs {sum(r[1] for r in theirs):>7.1f} s; CPU "
            f"{sum(r[4] for r in mine):>7.1f} s vs {sum(r[4] for r in theirs):>7.1f} s"
        )
    # (the processes that imported Great Expectations, as each reported: the standardise shards and
    # the profiles' check, not the validate tasks; none when they fork from the stage worker)
    processes, gx_tasks = sum(r[5] for r in last), sum(r[6] for r in last)
    if WORKER:
        print(
            f"stage processes: {processes}, each forked from one worker that imported the stages and "
            f"Great Expectations once; {gx_tasks} imported Great Expectations again"
        )
    else:
        floor = start_up_reference()
        fixed = processes * floor["bare"] + gx_tasks * (floor["gx"] - floor["bare"])
        print(
            f"fixed floor of the incremental night: {processes} stage processes x {floor['bare']:.2f} CPU "
            f"s start-up + {gx_tasks} Great Expectations imports x {floor['gx'] - floor['bare']:.2f} CPU s "
            f"= {fixed:.1f} CPU s ({fixed / full_cpu:.1%} of the full rebuild's CPU seconds); the rest, "
            f"{incremental_cpu - fixed:.1f} CPU s, is work ({(incremental_cpu - fixed) / full_cpu:.1%})"
        )
    print(f"incremental chain vs full re-link, by record: {json.dumps(agreement(lake, full_lake))}")
    import polars as pl

    from entity_resolution.evaluate import evaluate

    truth = pl.read_parquet(sources / "truth" / "records.parquet")
    for label, folder in (("incremental chain", lake), ("full re-link", full_lake)):
        scores = evaluate(pl.read_parquet(folder / "published" / "current" / "links" / "*.parquet"), truth)
        print(
            f"{label} vs truth: pairwise precision / recall / F1 {scores.pairwise_precision:.4f} / "
            f"{scores.pairwise_recall:.4f} / {scores.pairwise_f1:.4f}"
        )
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)
        shutil.rmtree(full_lake, ignore_errors=True)
    return 0


def validate_in_parallel(sources: list[str], lake: Path, day: str, workers: int = 2) -> float:
    """Wall time of the per-source stages from check on (check, standardise, validate) for every
    source, ``workers`` sources at a time (each stage in its own process, as Airflow's
    LocalExecutor runs the task groups)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.flow import PER_SOURCE

    from_check = [stage.name for stage in PER_SOURCE].index("check")

    def one(source: str) -> None:
        night = {"lake_dir": str(lake), "business_date": day}
        run_stages(PER_SOURCE[from_check:], night, source)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, sources))
    return time.perf_counter() - start


def machine_reference() -> float:
    """Seconds for a fixed pure-Python loop (20M additions): this machine's speed at the time of
    the run, printed beside the figures because a shared machine's speed varies, even within one run."""
    start = time.perf_counter()
    total = 0
    for i in range(20_000_000):
        total += i
    return time.perf_counter() - start


def start_up_reference() -> dict[str, float]:
    """CPU seconds (best of two) of a stage process that does nothing: the interpreter with the stage
    table and Polars imported (``bare``), and with Great Expectations too (``gx``, what every
    process that runs a suite pays: the standardise shards, the profiles' check). An incremental
    night's fixed floor, however few records changed."""
    import resource

    programs = {
        "bare": "import polars, pipelines.flow, pipelines.night",
        "gx": "import polars, pipelines.flow, pipelines.night, pipelines.quality.suites, great_expectations",
    }
    out = {}
    for name, program in programs.items():
        timings = []
        for _ in range(2):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run([sys.executable, "-c", program], cwd=ROOT, check=True)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            timings.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        out[name] = min(timings)
    return out


def import_reference() -> float:
    """Seconds to import Great Expectations in a fresh process (best of two): every task that runs
    a suite (the standardise shards, the profiles' check) pays it, so it is the fixed part of the
    validation figures."""
    timings = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import great_expectations"], cwd=ROOT, check=True)
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--date", default="2026-11-23")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the generated data and lake")
    parser.add_argument(
        "--reuse-sources",
        action="store_true",
        help="use the sources an earlier run generated with the same --entities and --days (--keep "
        "leaves them), rather than generating them again",
    )
    parser.add_argument("--days", type=int, default=1, help="days the generated data spread over")
    parser.add_argument(
        "--incremental-nights",
        type=int,
        default=0,
        help="time this many incremental nights ending at --date against a full rebuild (use --days 33 "
        "for about 3 %% of the records changing per night)",
    )
    parser.add_argument(
        "--reuse-lake",
        action="store_true",
        help="with --incremental-nights and a lake an earlier --keep run left: keep its first (full) "
        "night and run only the incremental nights after it (re-running a night gives the same result) "
        "and the full rebuild, to time a change of the incremental path without the first night",
    )
    parser.add_argument(
        "--validation-only",
        action="store_true",
        help="time only check + validate, two sources at a time, on the lake a --keep run left",
    )
    parser.add_argument(
        "--fresh-processes",
        action="store_true",
        help="start each stage in a new interpreter (a plain LocalExecutor's tasks) instead of forking "
        "it from a worker that imported the stages once (the repository's executors)",
    )
    args = parser.parse_args()
    lock = hold_workdir(args.workdir)  # noqa: F841 (held while this process lives)
    if not args.fresh_processes:
        WORKER.append(StageWorker(args.workdir / "stage-worker"))

    sources = args.workdir / f"sources-{args.entities}-{args.days}d"
    lake = args.workdir / f"lake-{args.entities}"
    if args.validation_only:
        if not (lake / "staged").exists():
            raise SystemExit(f"no kept lake at {lake}: run with --entities {args.entities} --keep first")
        from pipelines.sources.registry import source_names

        reference = machine_reference()
        wall = validate_in_parallel(source_names(), lake, args.date)
        print(
            f"validation of the kept {args.entities:,}-firm lake, two sources at a time: {wall:.1f} s wall "
            f"(20M-addition loop {reference:.2f} s; Great Expectations import {import_reference():.1f} s)"
        )
        return 0
    if not (args.incremental_nights and args.reuse_lake):
        shutil.rmtree(lake, ignore_errors=True)
    rows: list[Row] = []
    reference_before = machine_reference()

    if args.reuse_sources and (sources / "truth" / "records.parquet").exists():
        import polars as pl

        records = pl.scan_parquet(sources / "truth" / "records.parquet").select(pl.len()).collect().item()
    else:
        gen = run_stage("generate", str(sources), args.entities, args.seed, args.date, args.days)
        records = sum(gen["result"]["rows"].values()) if isinstance(gen["result"].get("rows"), dict) else 0
        rows.append(("generate", gen["seconds"], records, gen["peak_mb"], gen["cpu_seconds"]))

    from pipelines.sources.registry import source_names

    if args.incremental_nights:
        return incremental(args, sources, lake, rows, records)
    total_start = time.perf_counter()
    rows += run_night(sources, lake, args.date)
    pipeline_seconds = time.perf_counter() - total_start
    parallel_validation = validate_in_parallel(source_names(), lake, args.date)

    import polars as pl

    from entity_resolution.evaluate import evaluate

    scores = evaluate(
        pl.read_parquet(lake / "published" / "current" / "links" / "*.parquet"),
        pl.read_parquet(sources / "truth" / "records.parquet"),
    )

    print(f"\nbenchmark: {args.entities:,} firms, {records:,} source records, 2 cores")
    print(
        f"machine reference (20M-addition Python loop): {reference_before:.2f} s before, "
        f"{machine_reference():.2f} s after; Great Expectations import {import_reference():.1f} s\n"
    )
    print(f"{'stage':<28}{'seconds':>9}{'records':>12}{'records/s':>12}{'peak MB':>10}")
    for name, seconds, n, peak, *_ in rows:
        rate = n / seconds if seconds and n else 0
        print(f"{name:<28}{seconds:>9.1f}{n:>12,}{rate:>12,.0f}{peak:>10,.0f}")
    validated = sum(r[2] for r in rows if r[0].startswith("validate "))
    print(
        f"\nvalidation (raw suite + batch checks, standardised suite, quarantine, snapshot) of {validated:,} "
        f"records, sources two at a time as the DAG's task groups run: {parallel_validation:.1f} s wall"
    )
    print(
        f"pipeline end to end (extract..publish, incl. process start-up): {pipeline_seconds:.1f} s;"
        f" peak stage memory {max(r[3] for r in rows if r[0] != 'generate'):,.0f} MB"
    )
    print("linkage vs truth:", json.dumps(scores.as_dict()))
    if not args.keep:
        shutil.rmtree(lake, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
