"""The README's examples work: every bash and python block is run, in order, in a temporary folder
(the same folder for all, as a reader would), except blocks marked just above with
``<!-- not run by tests/test_readme.py: REASON -->``. ``--entities N`` is cut to a few dozen firms
to keep the run short; nothing else is changed. Codes quoted in the examples must be valid."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation.identifiers import is_valid_uscc

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SKIP_MARK = re.compile(r"^\s*<!-- not run by tests/test_readme\.py:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```(?P<language>\w+)\s*$")
RUNNABLE = ("bash", "python")
SMALL_ENTITIES = "40"
USCC_LIKE = re.compile(r"\b[1-9A-Y][1-9A-Y0-9]\d{6}[0-9A-Z]{10}\b")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    skip_reason: str | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, each with the skip reason written above it (if any)."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        opened = FENCE_OPEN.match(lines[index])
        if not opened:
            index += 1
            continue
        indent = len(opened["indent"])
        end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
        previous = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marked = SKIP_MARK.match(previous)
        code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        blocks.append(Block(index + 1, opened["language"], code, marked["reason"] if marked else None))
        index = end + 1
    return blocks


def test_the_extractor_finds_the_examples_and_every_skip_says_why() -> None:
    blocks = readme_blocks(README.read_text("utf-8"))
    runnable = [b for b in blocks if b.language in RUNNABLE and b.skip_reason is None]
    assert any("credit generate" in b.code for b in runnable)
    assert any("credit run" in b.code for b in runnable)
    assert any(b.language == "python" for b in runnable)
    assert all(b.skip_reason for b in blocks if b.skip_reason is not None)
    # a mark that no longer sits above a block would silently stop skipping: every mark has its block
    marks = sum(1 for line in README.read_text("utf-8").splitlines() if SKIP_MARK.match(line))
    assert marks == sum(1 for b in blocks if b.skip_reason)


def test_codes_in_the_examples_are_valid() -> None:
    codes = [c for b in readme_blocks(README.read_text("utf-8")) for c in USCC_LIKE.findall(b.code)]
    assert codes, "no USCC in the examples: the pattern no longer finds them"
    assert [c for c in codes if not is_valid_uscc(c)] == []


def test_readme_examples_run(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not (key.startswith("CREDIT_") and key.endswith("_CONFIG")) and key != "CREDIT_EXPECTATIONS_DIR"
    }
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `credit` of this venv
        "PYTHONPATH": str(REPO),  # ... running this checkout's code
        "TQDM_DISABLE": "1",
    }
    ran = 0
    for block in readme_blocks(README.read_text("utf-8")):
        if block.language not in RUNNABLE or block.skip_reason:
            continue
        code = re.sub(r"--entities \d+", f"--entities {SMALL_ENTITIES}", block.code)
        command = (
            ["bash", "-euo", "pipefail", "-c", code]
            if block.language == "bash"
            else [sys.executable, "-c", code]
        )
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"README.md line {block.line} ({block.language}) exits {done.returncode}:\n{code}\n"
            f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-3000:]}"
        )
        ran += 1
    assert ran >= 3
    assert (tmp_path / "data" / "lake" / "published" / "current" / "profiles").is_dir()
    assert (tmp_path / "dishonest.csv").exists() and (tmp_path / "grade-d-ningbo.xlsx").exists()


def test_the_deployment_table_says_what_deploy_celery_env_sets() -> None:
    """README's table of deployment settings shows deploy/celery.env, which is the definition: every
    setting it names is set there, and where it shows a plain value (a number, the executor) that is
    the file's value, so the two cannot drift apart."""
    settings = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "celery.env").read_text("utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    rows = re.findall(r"^\| (`AIRFLOW__[^|]*) \| ([^|]*) \|", README.read_text("utf-8"), re.MULTILINE)
    assert len(rows) >= 8
    for names, shown in rows:
        named = re.findall(r"`([^`]+)`", names)
        full = [n for n in named if n.startswith("AIRFLOW__")]
        assert full and all(n in settings for n in full), names
        plain = re.fullmatch(r"`?([\w.]+)`?(?: s)?", shown.strip())
        if plain:
            assert any(settings[n] == plain.group(1) for n in full), (names, shown)


def test_the_pipeline_table_is_the_stage_table() -> None:
    """README's table of stages lists pipelines/flow.py's STAGES (the definition) in order, each by
    its label and function, saying which stages run per source and which per shard or partition."""
    from pipelines.flow import STAGES

    rows = re.findall(r"^\| ([^|]+) \| `(pipelines\.[\w.]+)` \|", README.read_text("utf-8"), re.MULTILINE)
    rows = [(label.strip(), function) for label, function in rows if "DAG only" not in label]
    assert [function for _, function in rows] == [stage.function for stage in STAGES]
    for (label, _), stage in zip(rows, STAGES, strict=True):
        name, _, kinds = label.partition(" (")
        assert name == stage.label(), label
        assert ("per source" in kinds) == stage.per_source, label
        assert (f"per {stage.item}" in kinds) == bool(stage.mapped_over), label
