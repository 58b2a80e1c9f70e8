"""The production-shaped deployment (deploy/celery.env) for real: Airflow's metadata on PostgreSQL,
the CeleryExecutor on Redis, and two Celery workers as two hosts. Each worker runs in a network
namespace of its own with its own address and hostname, and reaches the broker, the metadata
database and the API server over a veth link (socat on the host side forwards to the machine's
servers, which listen on 127.0.0.1 only). The lake and the sources reach them over that link too:
each host mounts them with sshfs from an SSH file server (SFTP) on this machine, in a mount namespace
of its own, so a worker reads and writes the night's files only through the network, as it would on
a shared filesystem. One run of the real DAG: both hosts run per-source tasks, one worker is killed in the middle (every
process of its host), its tasks are retried on the other, and the run publishes exactly what
`credit run` publishes from the same data."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import END_DATE, _shared_root, mapping_settings, run_probe, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.waits]
SETTINGS_FILE = REPO / "deploy" / "celery.env"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DATABASE = "airflow_celery_test"
REDIS_DB = 11  # a Redis database of this test's own
SUBNET = "10.213"  # 10.213.1.0/24 for worker-a, 10.213.2.0/24 for worker-b
WORKERS = ("worker-a", "worker-b")
#: the test's tighter recovery: a lost task is failed after this many seconds without a heartbeat
HEARTBEAT_TIMEOUT = 30
SSHD = "/usr/sbin/sshd"  # the file server (Debian's openssh-server; sshfs is the hosts' client)
DAG_ID = "credit_nightly"
RUN_ID = "celery-two-hosts"


def settings_file(path: Path = SETTINGS_FILE) -> dict[str, str]:
    """deploy/celery.env as the deployment reads it: KEY=VALUE lines, comments and blanks skipped."""
    lines = (line.strip() for line in path.read_text("utf-8").splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_settings_file_sets_airflow_only_through_the_environment() -> None:
    """Every line is an Airflow (or credit) environment variable, and the executor is Celery on
    PostgreSQL, with the psycopg2 driver named in both URLs (SQLAlchemy 2.1 would pick psycopg 3)."""
    settings = settings_file()
    assert settings and all(key.startswith(("AIRFLOW__", "CREDIT_")) for key in settings)
    assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert settings["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert settings["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
    assert settings["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert not any("SECRET" in key or "FERNET" in key for key in settings)  # secrets come from elsewhere


PRELOAD_PROBE = """
import json, sys
import polars as pl
import deploy.worker_preload
from deploy.celery_config import CELERY_CONFIG
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from pipelines.flow import STAGES
from pipelines.quality.suites import ROW_ID, run_suite
before = set(sys.modules)
run_suite(pl.DataFrame({"record_id": ["1"]}).with_row_index(ROW_ID), "contract.raw")
print(json.dumps({
    "stage_modules": [s.function.rpartition(".")[0] in before for s in STAGES],
    "imported_by_a_validation": sorted(m for m in set(sys.modules) - before if m.startswith("great_expectations")),
    "defaults_kept": all(CELERY_CONFIG[k] == v for k, v in DEFAULT_CELERY_CONFIG.items()),
    "imports": list(CELERY_CONFIG["imports"]),
}))
"""


def test_a_worker_imports_the_stages_once_before_it_forks_their_task_processes() -> None:
    """deploy/celery.env points Celery at deploy/celery_config.py: Airflow's own Celery settings, plus
    deploy/worker_preload.py imported by each worker at start, so that the task processes it forks
    find every stage module and Great Expectations imported (a validation then imports none of GX's
    modules, about 5 CPU s a task) and the broker and result settings are still Airflow's."""
    assert settings_file()["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"] == "deploy.celery_config.CELERY_CONFIG"
    found, output = run_probe(PRELOAD_PROBE)
    assert all(found["stage_modules"]), found
    assert found["imported_by_a_validation"] == [], found
    assert found["defaults_kept"] and found["imports"] == ["deploy.worker_preload"], found
    assert "credit worker: preloaded" in output


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_ping() -> None:
    with socket.create_connection(("127.0.0.1", 6379), timeout=3) as sock:
        sock.sendall(b"PING\r\n")
        if not sock.recv(16).startswith(b"+PONG"):
            raise OSError("no PONG")


@pytest.fixture(scope="module")
def servers() -> str:
    """PostgreSQL and Redis on 127.0.0.1, root and the network tools, or a skip saying which is
    missing (a failure in CI); then a fresh metadata database and Redis database for this test."""
    import sqlalchemy as sa

    try:
        redis_ping()
    except OSError as exc:
        skip_or_fail(f"no Redis server on 127.0.0.1:6379 ({exc})")
    if os.geteuid() != 0:
        skip_or_fail("the two worker hosts are network namespaces: root is needed")
    for tool in ("ip", "socat", "unshare", "sshfs", SSHD):
        if not shutil.which(tool):
            skip_or_fail(f"{tool} is not installed (scripts/ci-services.sh installs it)")
    admin = sa.create_engine(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as con:
            con.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
            con.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
    except sa.exc.OperationalError as exc:
        skip_or_fail(f"no PostgreSQL server on 127.0.0.1:5432 ({exc.orig})")
    finally:
        admin.dispose()
    import redis

    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{DATABASE}"


@dataclass
class Host:
    """A worker host: a network namespace joined to this machine by a veth pair."""

    name: str
    index: int
    forwarders: list[subprocess.Popen] = field(default_factory=list)

    @property
    def tag(self) -> str:
        return f"{os.getpid() % 100000}{self.index}"

    @property
    def namespace(self) -> str:
        return f"credit-celery-{self.tag}"

    @property
    def address(self) -> str:
        """This machine's end of the link: where the host finds the servers."""
        return f"{SUBNET}.{self.index}.1"

    @property
    def own_address(self) -> str:
        """The host's end of the link."""
        return f"{SUBNET}.{self.index}.2"


def connect_host(host: Host, ports: tuple[int, ...]) -> None:
    """Namespace, veth pair (10.213.N.1 here, .2 there) and one socat per port forwarding the
    host's connections to the server on 127.0.0.1 (so PostgreSQL's loopback trust applies)."""
    outside, inside = f"ccel{host.tag}h", f"ccel{host.tag}n"
    run("ip", "netns", "add", host.namespace)
    run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
    run("ip", "link", "set", inside, "netns", host.namespace)
    run("ip", "addr", "add", f"{host.address}/24", "dev", outside)
    run("ip", "link", "set", outside, "up")
    inns = ("ip", "netns", "exec", host.namespace)
    run(*inns, "ip", "addr", "add", f"{host.own_address}/24", "dev", inside)
    run(*inns, "ip", "link", "set", inside, "up")
    run(*inns, "ip", "link", "set", "lo", "up")
    for port in ports:
        host.forwarders.append(
            subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={host.address},fork,reuseaddr", f"TCP:127.0.0.1:{port}"],
                start_new_session=True,
            )
        )


@dataclass
class FileServer:
    """An SSH server on this machine, listening only on the hosts' links, that serves ``shared`` (the
    sources, the lake and the logs) over SFTP to every host, with keys made for this test alone."""

    shared: Path
    folder: Path
    port: int
    process: subprocess.Popen | None = None

    def start(self, hosts: list[Host]) -> None:
        keys = self.folder
        keys.mkdir(parents=True, exist_ok=True)
        for key in ("host", "client"):
            run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / key))
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        host_key = (keys / "host.pub").read_text().split()[:2]
        (keys / "known_hosts").write_text(
            "".join(f"[{host.address}]:{self.port} {' '.join(host_key)}\n" for host in hosts)
        )
        config = [
            f"Port {self.port}",
            *(f"ListenAddress {host.address}" for host in hosts),
            f"HostKey {keys / 'host'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",
            "UsePAM no",
            "PidFile none",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
        ]
        (keys / "sshd_config").write_text("\n".join(config) + "\n")
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        with open(keys / "sshd.log", "w") as log:
            self.process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(keys / "sshd_config")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # listening on every host's link before a host mounts (a loaded machine once had a host's
        # sshfs reach the port first: "read: Connection reset by peer", and that worker never started)
        wait_for(
            "the file server to listen on every host's link",
            lambda: self.log().count("Server listening on") >= len(hosts),
            60,
            keys,
        )

    def mount_command(self, host: Host) -> str:
        """The shell command a host runs to see ``shared`` at the same path, through the network
        only; no caching of names or attributes, as the other host writes there too."""
        options = ",".join(
            (
                f"port={self.port}",
                f"IdentityFile={self.folder / 'client'}",
                f"UserKnownHostsFile={self.folder / 'known_hosts'}",
                "StrictHostKeyChecking=yes",
                "dir_cache=no",
                "attr_timeout=0",
                "entry_timeout=0",
                "negative_timeout=0",
            )
        )
        return f"sshfs -o {options} root@{host.address}:{self.shared} {self.shared}"

    def log(self) -> str:
        return (self.folder / "sshd.log").read_text("utf-8", "replace")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)


def mounted_over_the_network(pid: int, path: Path) -> bool:
    """Does process ``pid`` see ``path`` as an sshfs mount (its own mount namespace)?"""
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) and " - fuse.sshfs " in line for line in mounts)


def signal_host_processes(host: Host, sig: signal.Signals) -> None:
    """Send `sig` to every process in the host's namespace: the worker, its pool, every task it runs.
    Listed again until no new one appears, so a process forked meanwhile is not missed."""
    signalled: set[int] = set()
    while (
        pids := {int(pid) for pid in run("ip", "netns", "pids", host.namespace, check=False).stdout.split()}
        - signalled
    ):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        signalled |= pids


def kill_host_processes(host: Host) -> None:
    signal_host_processes(host, signal.SIGKILL)


def remove_host(host: Host) -> None:
    kill_host_processes(host)
    for forwarder in host.forwarders:
        stop_group(forwarder)
    run("ip", "netns", "del", host.namespace, check=False)  # takes the veth pair with it
    run("ip", "link", "del", f"ccel{host.tag}h", check=False)  # unless it never got there


def stop_group(process: subprocess.Popen, grace: float = 5) -> None:
    """Stop a process started in its own session, and every process of its group."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Deployment:
    """The running deployment and how to look at it."""

    env: Callable[[str], dict[str, str]]  # the environment of a component on a host reaching `address`
    logs: Path
    files: FileServer
    database: Any  # a SQLAlchemy engine on the metadata database
    hosts: dict[str, Host]
    workers: dict[str, subprocess.Popen]

    def airflow(self, *args: str) -> str:
        done = subprocess.run(
            [AIRFLOW, *args], env=self.env("127.0.0.1"), capture_output=True, text=True, cwd=REPO, timeout=300
        )
        assert done.returncode == 0, (
            f"airflow {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
        return done.stdout

    def rows(self, sql: str, **params: Any) -> list[Any]:
        import sqlalchemy as sa

        with self.database.connect() as con:
            return list(con.execute(sa.text(sql), params))


def wait_for(what: str, check: Callable[[], Any], timeout: float, logs: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(2)
    tails = ""
    if logs is not None:
        for log in sorted(logs.glob("*.log")):
            tails += f"\n--- {log.name}\n{log.read_text('utf-8', 'replace')[-3000:]}"
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tails}")


@pytest.fixture(scope="module")
def deployment(servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Scheduler, DAG processor and API server on this machine, one Celery worker on each of two
    hosts, all with deploy/celery.env pointed at this test's database, Redis database and port. Every
    process, namespace and forwarder is removed afterwards, whatever happened."""
    import sqlalchemy as sa

    port = free_port()
    logs = tmp_path_factory.mktemp("celery-logs")
    settings = settings_file()
    # the file's addresses, retargeted at this test's own database, Redis database and API port
    retarget = {
        "/airflow_credit": f"/{DATABASE}",
        "6379/0": f"6379/{REDIS_DB}",
        ":8080": f":{port}",
    }
    for old in retarget:
        assert any(old in value for value in settings.values()), f"deploy/celery.env: no {old} to retarget"
    for old, new in retarget.items():
        settings = {key: value.replace(old, new) for key, value in settings.items()}
    settings["AIRFLOW__API__PORT"] = str(port)
    secret = secrets.token_hex(64)
    common = {
        **settings,
        "AIRFLOW_HOME": str(REPO),
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(AIRFLOW).parent}:{os.environ['PATH']}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__SECRET_KEY": secret,
        "AIRFLOW__API_AUTH__JWT_SECRET": secret,
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "airflow"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "dag-processor"),
        # a modest load on a shared 2-core machine: two tasks per worker, four at once
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        # a lost worker's tasks are noticed in seconds, not minutes
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
        # only the triggered run: no scheduled night (unpausing would start the latest one)
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # small shards and partitions: the large stages run as several mapped tasks each
        **mapping_settings(
            logs / "config", extract_shard_rows=250, partition_signatures=400, profile_shard_entities=60
        ),
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")}

    def env(address: str) -> dict[str, str]:
        return {**base_env, **{k: v.replace("127.0.0.1", address) for k, v in common.items()}}

    started: list[subprocess.Popen] = []
    hosts: dict[str, Host] = {}
    database = sa.create_engine(servers)
    # the sources, the lake and the logs all live under the pytest run's shared folder; the keys
    # outside it (the client reads its key while that folder is being mounted)
    files = FileServer(
        _shared_root(tmp_path_factory), Path(tempfile.mkdtemp(prefix="credit-celery-ssh-")), free_port()
    )

    def start(name: str, command: list[str], address: str = "127.0.0.1") -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                command,
                env=env(address),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    try:
        migrate = subprocess.run(
            [AIRFLOW, "db", "migrate"], env=env("127.0.0.1"), cwd=REPO, capture_output=True, text=True
        )
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        start("scheduler", [AIRFLOW, "scheduler"])
        start("dag-processor", [AIRFLOW, "dag-processor"])
        start("api-server", [AIRFLOW, "api-server"])
        for index, name in enumerate(WORKERS, start=1):
            host = hosts[name] = Host(name, index)  # registered first: removed whatever fails next
            connect_host(host, (5432, 6379, port))
        files.start(list(hosts.values()))
        workers = {}
        for name, host in hosts.items():
            # a host of its own: its own UTS namespace and hostname (which task instances record),
            # and its own mount namespace, where the shared folder is the file server's, mounted
            # over the same path
            workers[name] = start(
                name,
                [
                    "ip", "netns", "exec", host.namespace, "unshare", "--uts", "--mount",
                    "--propagation", "private", "sh", "-c",
                    f'hostname {name} && {files.mount_command(host)} && exec "$@"', "sh",
                    AIRFLOW, "celery", "worker", "--celery-hostname", f"{name}@{name}",
                ],
                address=host.address,
            )  # fmt: skip
        for name in WORKERS:
            wait_for(
                f"{name} ready",
                lambda n=name: "ready." in (logs / f"{n}.log").read_text("utf-8", "replace"),
                180,
                logs,
            )
            assert mounted_over_the_network(workers[name].pid, files.shared), f"{name}: no sshfs mount"
        deployment = Deployment(env, logs, files, database, hosts, workers)
        wait_for(
            "the DAG processor to serialise credit_nightly",
            lambda: deployment.rows("SELECT 1 FROM serialized_dag WHERE dag_id = :d", d=DAG_ID),
            180,
            logs,
        )
        yield deployment
    finally:
        for host in hosts.values():
            kill_host_processes(host)
        for process in reversed(started):
            stop_group(process)
        for host in hosts.values():
            remove_host(host)
        files.stop()
        shutil.rmtree(files.folder, ignore_errors=True)
        database.dispose()
        import redis

        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


def task_rows(deployment: Deployment, table: str = "task_instance") -> list[Any]:
    """Every task instance of the run (a mapped task's items apart: "extract[2]"): its last try's
    number, state and host; from task_instance_history, the tries before the last."""
    return [
        (task_id if index < 0 else f"{task_id}[{index}]", number, state, host)
        for task_id, index, number, state, host in deployment.rows(
            f"SELECT task_id, map_index, try_number, state, hostname FROM {table} WHERE run_id = :r", r=RUN_ID
        )
    ]


def manifest_files(lake: Path) -> dict[str, Any]:
    """What a lake publishes: each published file's rows and sha256 (run ids and versions aside)."""
    return json.loads((lake / "published" / "current" / "manifest.json").read_text("utf-8"))["files"]


def test_two_worker_hosts_run_the_night_and_a_killed_one_loses_nothing(
    deployment: Deployment, published_lakes: Any, tmp_path: Path
) -> None:
    sources, reference = published_lakes.lake(300, 5)  # `credit run` on the same data: the reference
    lake = tmp_path / "lake"
    business_date = END_DATE.isoformat()
    conf = {"sources_dir": str(sources), "lake_dir": str(lake), "business_date": business_date}
    # a paused DAG's runs wait: unpaused (the scheduler starts no scheduled night, see above)
    deployment.airflow("dags", "trigger", DAG_ID, "--run-id", RUN_ID, "--conf", json.dumps(conf))
    deployment.airflow("dags", "unpause", DAG_ID)
    doomed, survivor = WORKERS
    per_source = "task_id LIKE '%.%'"

    def mid_run_on_the_doomed_host() -> list[Any]:
        """A mapped per-source task (an extract shard) done by the doomed host and one it is running now."""
        done_there = deployment.rows(
            f"SELECT 1 FROM task_instance WHERE run_id = :r AND {per_source} AND hostname = :h "
            "AND map_index >= 0 AND state = 'success'",
            r=RUN_ID,
            h=doomed,
        )
        running = [
            (task_id, number)
            for task_id, number, state, host in task_rows(deployment)
            if host == doomed and state == "running"
        ]
        return running if done_there else []

    def frozen_mid_run() -> list[Any]:
        """The doomed host stopped (SIGSTOP) while it runs tasks: a task it runs can no longer finish
        or report, so the tasks read as running after the freeze are the ones its death loses (a
        small task read as running and killed a moment later had sometimes finished in between)."""
        if not mid_run_on_the_doomed_host():
            return []
        signal_host_processes(deployment.hosts[doomed], signal.SIGSTOP)
        time.sleep(1)  # a state report already on its way lands
        if running := mid_run_on_the_doomed_host():
            return running
        signal_host_processes(deployment.hosts[doomed], signal.SIGCONT)
        return []

    running = wait_for(f"{doomed} to be in the middle of the run", frozen_mid_run, 300, deployment.logs)
    kill_host_processes(deployment.hosts[doomed])  # the host is gone: worker, pool and tasks at once
    deployment.workers[doomed].wait(30)
    print(f"killed {doomed} while it ran {sorted(running)}")

    def finished() -> str | None:
        states = deployment.rows("SELECT state FROM dag_run WHERE run_id = :r", r=RUN_ID)
        return states[0][0] if states and states[0][0] in ("success", "failed") else None

    assert wait_for("the run to finish", finished, 420, deployment.logs) == "success", task_rows(deployment)
    current = {task_id: (state, host, number) for task_id, number, state, host in task_rows(deployment)}
    earlier = task_rows(deployment, "task_instance_history")
    print(f"tries before the last: {earlier}")
    assert [run_id for (run_id,) in deployment.rows("SELECT run_id FROM dag_run")] == [RUN_ID]
    # every task ended in success, the report included
    assert {state for state, _, _ in current.values()} == {"success"}, current
    # both hosts ran per-source tasks to success, and mapped tasks (an item of a stage cut into
    # shards or partitions); every large stage ran as several items
    assert {host for task_id, (_, host, _) in current.items() if "." in task_id} == set(WORKERS), current
    assert {host for task_id, (_, host, _) in current.items() if "[" in task_id} == set(WORKERS), current
    for stage in ("extract", "standardise", "resolve_partition", "build_profiles"):
        assert any(f"{stage}[1]" in task_id for task_id in current), (stage, sorted(current))
    # what the lost host was running was lost with it and ran again, on the other host; nothing else
    # was tried twice
    lost = {task_id for task_id, _, _, host in earlier}
    assert lost and {host for _, _, _, host in earlier} == {doomed}, earlier
    assert {task_id for task_id, _ in running} <= lost, (running, earlier)
    for task_id in lost:
        assert current[task_id][1] == survivor and current[task_id][2] >= 2, (task_id, current[task_id])
    # each worker imported the stages once at start (deploy/worker_preload.py), before forking tasks
    for name in WORKERS:
        assert "credit worker: preloaded" in (deployment.logs / f"{name}.log").read_text(
            "utf-8", "replace"
        ), name
    # and every stage's task process found them imported (its result's resources say so)
    preloaded = {}
    for task_id, value in deployment.rows(
        "SELECT task_id, value FROM xcom WHERE run_id = :r AND key = 'return_value'", r=RUN_ID
    ):
        while isinstance(value, str) and value[:1] in '{"':
            value = json.loads(value)  # (stored as JSON text, a dict's perhaps twice)
        if isinstance(value, dict) and "resources" in value:
            preloaded[task_id] = value["resources"].get("preloaded")
    assert len(preloaded) >= 20 and all(preloaded.values()), preloaded
    # each host reached the sources and the lake through its link to the file server
    for host in deployment.hosts.values():
        assert f"Accepted publickey for root from {host.own_address} " in deployment.files.log(), host
    # the night published exactly what an undisturbed `credit run` publishes from the same data
    assert manifest_files(lake) == manifest_files(reference)
