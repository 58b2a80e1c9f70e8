"""The package installs: the wheel carries code, settings, suites, specs and page assets (and not the
synthetic source systems, a distribution of their own in synthetic/), declares every package it
imports, and works from a fresh virtual environment outside the checkout.

The fresh environment reuses the shared venv's third-party packages through a .pth path line (no
network, no minutes of installing); a path line does not run the shared venv's own .pth files, so
the checkout's editable-install finder stays out and the project's code really comes from the wheel.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import venv
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from tests.service_support import free_port

pytestmark = pytest.mark.slow  # end to end: left out by make test-quick

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
#: the synthetic source systems: their own distribution, for development, tests and benchmarks
SYNTHETIC = REPO / "synthetic"
SYNTHETIC_PYPROJECT = tomllib.loads((SYNTHETIC / "pyproject.toml").read_text("utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
#: the top-level import packages the wheel ships (foundation, pipelines, serving, entity_resolution)
TOP_LEVEL = sorted({name.partition(".")[0] for name in SETUPTOOLS["packages"]})
#: checkout folder -> where the wheel puts it (config/ -> foundation/config/, ...)
MAPPED = {folder: package.replace(".", "/") for package, folder in SETUPTOOLS["package-dir"].items()}
#: code that runs in production without being in the wheel (Airflow reads the DAG from its folder)
DEPLOYED_BESIDE = ["dags"]
BUSINESS_DATE = "2026-11-23"


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])


def checkout_files() -> list[str]:
    """Every file of the checkout that git would commit (tracked, or new and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted(name for name in listed.split("\0") if name and (REPO / name).is_file())


def build_wheel(root: Path, folder: str = "") -> Path:
    """`pip wheel --no-deps` of ``folder`` (the checkout's root, or synthetic) in a clean copy of the
    checkout (an in-tree build/ could carry stale files)."""
    source = root / "source"
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name, follow_symlinks=False)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--wheel-dir", str(root / "dist"), str(source / folder)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = (root / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def synthetic_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("synthetic-wheel"), "synthetic")


def test_the_wheel_does_not_carry_the_generator(wheel: Path, synthetic_wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = sorted(p.name for p in (SYNTHETIC / "credit_synthetic").glob("*.py"))
    assert {"generate.py", "vocab.py", "demo.py"} <= set(modules)  # the check sees what it must
    # neither the package nor the modules where they lived before (pipelines/generate.py, ...)
    generator = {"generate.py", "vocab.py", "_vocab.py", "demo.py"}
    carried = [n for n in names if n.startswith("credit_synthetic/") or n.rpartition("/")[2] in generator]
    assert not carried, f"the runtime wheel carries the synthetic source systems: {carried}"
    # they ship in their own wheel, which registers `credit generate`
    synthetic = zipfile.ZipFile(synthetic_wheel)
    assert {f"credit_synthetic/{m}" for m in modules} <= set(synthetic.namelist())
    (entry_points,) = [n for n in synthetic.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "[credit.commands]" in synthetic.read(entry_points).decode()


def test_wheel_carries_code_settings_suites_specs_and_pages(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for name in checkout_files():
        top, _, rest = name.partition("/")
        if top in MAPPED:
            expected.add(f"{MAPPED[top]}/{rest}")
        elif top in TOP_LEVEL and "/tests/" not in name:
            expected.add(name)
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    # the folders travel whole, and are not empty
    for folder, inside in MAPPED.items():
        assert any(n.startswith(inside + "/") and n.endswith((".toml", ".json")) for n in names), folder
    assert any(n.startswith("entity_resolution/specs/") for n in names)
    assert any(n.startswith("serving/pages/static/") for n in names)


def test_wheel_metadata_has_licence_readme_classifiers_and_version(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(archive.read(meta_name).decode("utf-8"))
    project = PYPROJECT["project"]
    assert meta["Version"] == project["version"]
    assert meta["License-Expression"] == project["license"]
    licence = meta_name.replace("METADATA", "licenses/LICENSE")
    assert archive.read(licence) == (REPO / "LICENSE").read_bytes()
    assert meta["Description-Content-Type"] == "text/markdown"
    assert (REPO / "README.md").read_text("utf-8").splitlines()[0] in meta.get_payload()
    assert meta.get_all("Classifier") == project["classifiers"]
    declared = {requirement_name(r) for r in meta.get_all("Requires-Dist") if "extra ==" not in r}
    assert declared == {requirement_name(r) for r in project["dependencies"]}


def imported_packages(folder: Path, first_party: frozenset[str] | None = None) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under ``folder`` (inside functions too) -> files, other
    than the standard library and ``first_party`` (by default the project's own packages)."""
    found: dict[str, set[str]] = {}
    first_party = first_party if first_party is not None else frozenset({*TOP_LEVEL, *DEPLOYED_BESIDE})
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in first_party:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    providers = metadata.packages_distributions()
    providing = {canonical(d) for names in providers.values() for d in names}
    declared = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    # a declared meta-package (apache-airflow) provides no modules itself: it declares its requirements
    for name in list(declared):
        if name not in providing:
            declared |= {requirement_name(r) for r in metadata.requires(name) or [] if "extra ==" not in r}
    undeclared = {}
    for folder in [*TOP_LEVEL, *DEPLOYED_BESIDE]:
        for module, files in imported_packages(REPO / folder).items():
            if not {canonical(d) for d in providers.get(module, [])} & declared:
                undeclared[module] = sorted(files)
    assert not undeclared, f"imported but not declared in pyproject.toml's dependencies: {undeclared}"
    # and the scan sees what it must: a package imported only inside a function counts too
    assert {"msgspec", "numpy", "pendulum", "uvicorn"} <= set(imported_packages(REPO / "serving")) | set(
        imported_packages(REPO / "pipelines")
    ) | set(imported_packages(REPO / "dags"))


def test_the_synthetic_distribution_declares_what_it_imports() -> None:
    providers = metadata.packages_distributions()
    declared = {requirement_name(r) for r in SYNTHETIC_PYPROJECT["project"]["dependencies"]}
    found = imported_packages(SYNTHETIC / "credit_synthetic", first_party=frozenset({"credit_synthetic"}))
    assert "pipelines" in found and "numpy" in found  # the scan sees what it must
    undeclared = {
        module: sorted(files)
        for module, files in found.items()
        if not {canonical(d) for d in providers.get(module, [])} & declared
    }
    assert not undeclared, f"imported but not declared in synthetic/pyproject.toml: {undeclared}"


def clean_environment(venv_bin: Path) -> dict[str, str]:
    """The environment of someone who installed the wheel: no checkout on the path, no overrides."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "AIRFLOW_HOME", "VIRTUAL_ENV", "CREDIT_EXPECTATIONS_DIR")
        and not (key.startswith("CREDIT_") and key.endswith("_CONFIG"))
    }
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv_bin.parent)
    return env


def test_installed_wheel_generates_runs_and_serves(
    wheel: Path, synthetic_wheel: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    # without PYTHONPATH: a checkout on it holds the editable install's egg-info, and pip would take
    # the project as installed already and install nothing
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
        + [str(wheel)],
        capture_output=True,
        text=True,
        env=clean_environment(target / "bin"),
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    # only then the shared third-party packages: as a path line, which runs none of their .pth files
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # (every site-packages folder this interpreter reads: a venv may itself reach another by a path line)
    shared = [sysconfig.get_paths()["purelib"]] + [
        p for p in sys.path if p.endswith("site-packages") and p != sysconfig.get_paths()["purelib"]
    ]
    (site_packages / "shared-third-party.pth").write_text("\n".join(shared) + "\n", "utf-8")
    work = tmp_path / "elsewhere"  # outside the checkout: nothing is found through it
    work.mkdir()
    env = clean_environment(target / "bin")

    def run(*args: str, timeout: float = 300, status: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == status, f"{args}:\n{done.stderr[-3000:]}"
        return done

    where = json.loads(
        run(
            str(python),
            "-c",
            "import json, pipelines, serving, entity_resolution, foundation.settings as s, "
            "pipelines.profiles.build as p; print(json.dumps({'code': [m.__file__ for m in "
            "(pipelines, serving, entity_resolution)], 'config': str(s.CONFIG_DIR), "
            "'expectations': str(s.EXPECTATIONS_DIR), 'grades': len(p.load_grading()['grades'])}))",
        ).stdout
    )
    inside = str(target.resolve())
    for path in [*where["code"], where["config"], where["expectations"]]:
        assert path.startswith(inside), f"{path} is not from the installed wheel"
    assert where["grades"] > 0

    credit = str(target / "bin" / "credit")
    version = run(credit, "--version").stdout
    assert PYPROJECT["project"]["version"] in version and PYPROJECT["project"]["name"] in version

    generate = (
        credit,
        "generate",
        "--entities",
        "40",
        "--seed",
        "5",
        "--end-date",
        BUSINESS_DATE,
        "-q",
        "--json",
    )
    # the runtime wheel alone has no generator: the command says where to get it, and fails
    missing = run(*generate, status=1)
    assert missing.stdout == "" and "credit-synthetic" in missing.stderr and "./synthetic" in missing.stderr
    assert "generate" in run(credit, "--help").stdout  # still listed, marked as not installed
    # with the synthetic source systems' own wheel installed next to it, `credit generate` is there
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
        + [str(synthetic_wheel)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    generated = json.loads(run(*generate).stdout)
    assert generated["entities"] == 40 and (work / "data" / "sources" / "manifest.json").exists()
    published = json.loads(run(credit, "run", "-q", "--json").stdout)  # the defaults: ./data/...
    assert published["business_date"] == BUSINESS_DATE and published["profiles"] > 0
    assert (work / "data" / "lake" / "published" / "current" / "profiles").is_dir()

    lake = work / "data" / "lake"
    token = run(credit, "token", "create", "--role", "regulator", "--name", "wheel", "--lake", str(lake))
    port = free_port()
    server = subprocess.Popen(
        [credit, "serve", "--lake", str(lake), "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"{base}/api/v1/runs", headers=headers, timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "credit serve did not answer within 60 s"
                time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        assert answer.json(), "no runs listed"
        page = httpx.get(f"{base}/search", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert assets, "the search page references no static assets"
        for asset in assets:
            assert httpx.get(base + asset, timeout=5).status_code == 200, asset
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"wheel build excluded; venv, install, generate, run and serve took {time.monotonic() - started:.1f} s"
    )
