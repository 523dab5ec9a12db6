"""Promise 7: a job's output folder is uploaded without following links out of it.

A job (user code from any repository) leaves symlinks in its output folder pointing at the
worker host's files; none of them may be uploaded as an artifact or registered as a model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from orchestrator.runtime import Runtime
from orchestrator.scheduler.daemon import Scheduler
from tests.conftest import CLI
from tests.tasks import conftest as task_fixtures
from tests.tasks.conftest import Repo, run_git

git_repo = task_fixtures.git_repo

LINKS = """\
import os, pathlib
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
(out / "models").mkdir(exist_ok=True)
(out / "real.txt").write_text("mine")
os.symlink("real.txt", out / "alias.txt")                 # stays inside: fine
os.symlink(SECRET, out / "leak.txt")                      # a host file
os.symlink(SECRET, out / "models" / "stolen.pkl")         # a host file as a model
os.symlink(os.path.dirname(SECRET), out / "hostdir")      # a host folder
os.symlink(SECRET, out / "metrics.json")                  # metrics read from the host
"""



def test_links_out_of_the_output_folder_are_not_uploaded(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_text('{"accuracy": 1.0}')
    (git_repo.path / "train.py").write_text(LINKS.replace("SECRET", repr(str(secret))))
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "links")
    task = cli("task", "create", "--project", "p", "--name", "links", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    run = cli("task", "run", task).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    Scheduler(Runtime(), triggers, wakeup=False).ingest.step()

    shown = cli.json("task", "show", run)
    assert shown["status"] == "completed", shown["error"]
    paths = sorted(a["path"] for a in shown["artifacts"])
    assert paths == ["alias.txt", "output.log", "real.txt"], paths
    assert shown["metrics"] == {}, shown["metrics"]
    assert cli.json("model", "list", "--project", "p") == []
    # New-user pass: the skips were said only to the live log, after output.log was closed;
    # the run's log (what `retrain logs` shows once it ended) says them now.
    logged = cli("logs", run).out
    assert "skipped metrics.json: a link out of the output folder" in logged, logged[-2000:]


SWAPPER = """\
import os, pathlib, sys, time
out = pathlib.Path(os.environ["RETRAIN_OUTPUT_DIR"])
tmp = pathlib.Path(os.environ["TMPDIR"])
(out / "real.txt").write_text("mine")
if os.fork() == 0:
    os.setsid()  # leaves the job's process group, which the worker kills at the end
    if os.fork():
        os._exit(0)
    (tmp / "pid").write_text(str(os.getpid()))
    while True:  # swap the output for a link to the host's file and back, forever
        os.symlink(SECRET, out / "swap")
        os.replace(out / "swap", out / "real.txt")
        (out / "back").write_text("mine")
        os.replace(out / "back", out / "real.txt")
while not (tmp / "pid").exists():
    time.sleep(0.01)
print("DAEMON", (tmp / "pid").read_text(), flush=True)
"""


def test_a_job_process_that_left_its_group_dies_before_the_outputs_are_read(
    cli: CLI, git_repo: Repo, machine_redis: str, tmp_path: Path
) -> None:
    """Found by the attacker pass on issue 10 (F2): a grandchild that called setsid() outlived
    its job and swapped an output for a link to a host file after the worker had listed the
    outputs, so the host file was uploaded. It must be dead when the job ends."""
    import hashlib

    import redis

    from orchestrator.queue import keys

    secret = tmp_path / "host" / "shadow"
    secret.parent.mkdir()
    secret.write_text("the worker's secret")
    (git_repo.path / "train.py").write_text(SWAPPER.replace("SECRET", repr(str(secret))))
    (git_repo.path / "requirements.txt").write_text("")
    run_git(git_repo.path, "commit", "-qam", "a daemon")
    task = cli("task", "create", "--project", "p", "--name", "swap", "--repo",
               str(git_repo.path), "--script", "train.py", "--queue", "gpu").out.strip()
    run = cli("task", "run", task).out.strip()
    done = subprocess.run(
        [sys.executable, "-c", "from orchestrator.cli import main; main()", "worker",
         "--queue", "gpu", "--gpus", "none", "--burst"],
        env=os.environ.copy(), capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stderr
    client = redis.Redis.from_url(machine_redis)
    lines = [e[1][b"line"].decode() for e in client.xrange(keys.logs_stream(run))]
    client.close()
    daemon = next(int(line.split()[1]) for line in lines if line.startswith("DAEMON "))
    try:
        os.kill(daemon, 0)
        alive = Path(f"/proc/{daemon}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except ProcessLookupError:
        alive = False
    if alive:
        os.kill(daemon, 9)
    assert not alive, "the daemon outlived its job"
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text("version: 1\ntriggers: []\n")
    Scheduler(Runtime(), triggers, wakeup=False).ingest.step()
    shown = cli.json("task", "show", run)
    leaked = hashlib.sha256(secret.read_bytes()).hexdigest()
    assert not [a for a in shown["artifacts"] if a["uri"].endswith(leaked)], shown["artifacts"]


def _job(tmp_path: Path) -> tuple[object, Path, list[str]]:
    from orchestrator.settings import Settings
    from workers.job import Job

    settings = Settings.load(home=tmp_path / "home", storage_url=(tmp_path / "blobs").as_uri())
    job = Job({"task_id": "0" * 32, "spec": {}}, settings, None, "w")  # type: ignore[arg-type]
    outputs = job.workdir / "outputs"
    (outputs / "models").mkdir(parents=True)
    notes: list[str] = []
    job._log_line = lambda _stream, line: notes.append(line)  # type: ignore[method-assign]
    return job, outputs, notes


def test_an_output_swapped_for_a_link_after_the_listing_is_not_uploaded(tmp_path: Path) -> None:
    """F2, second half: what was listed as a regular file is opened again without following
    links, so a link put in its place (by anything still running) is not followed."""
    import hashlib

    from workers.job import output_files

    job, outputs, notes = _job(tmp_path)
    secret = tmp_path / "shadow"
    secret.write_text("the worker's secret")
    (outputs / "real.txt").write_text("mine")
    (outputs / "models" / "m.bin").write_text("weights")
    listed = output_files(outputs, notes.append)
    assert sorted(p.name for p in listed) == ["m.bin", "real.txt"]
    for name in ("real.txt", "models/m.bin"):
        (outputs / name).unlink()
        (outputs / name).symlink_to(secret)
    leaked = hashlib.sha256(secret.read_bytes()).hexdigest()
    uris = [job._upload(path) for path in listed]  # type: ignore[attr-defined]
    assert not [u for u in uris if u and u.endswith(leaked)], uris
    assert uris == [None, None], uris
    assert len([n for n in notes if "skipped" in n]) == 2, notes
    (outputs / "models").rename(outputs / "moved")
    (outputs / "models").symlink_to(secret.parent)  # a folder on the way, not the file
    assert job._upload(outputs / "models" / "shadow") is None  # type: ignore[attr-defined]


def test_special_files_are_skipped_and_named(tmp_path: Path) -> None:
    from workers.job import output_files

    _, outputs, notes = _job(tmp_path)
    (outputs / "real.txt").write_text("mine")
    os.mkfifo(outputs / "pipe")
    assert [p.name for p in output_files(outputs, notes.append)] == ["real.txt"]
    assert any("pipe" in n and "not a regular file" in n for n in notes), notes


def test_a_sparse_output_is_not_expanded_into_storage(tmp_path: Path) -> None:
    """Attacker pass, second round: `truncate(outputs/huge.bin, 3 GiB)` costs the job
    nothing on disk, and the worker spent 25 s hashing and copying it and wrote 3.1 GB of
    real blob storage (a 1 TB one fills it). A large file mostly made of holes is skipped
    and said; a real file of the same kind of size is not affected (made small here)."""
    job, outputs, notes = _job(tmp_path)
    with open(outputs / "huge.bin", "wb") as huge:
        huge.truncate(1024**3)
    (outputs / "real.bin").write_bytes(os.urandom(4096))
    assert job._upload(outputs / "huge.bin") is None  # type: ignore[attr-defined]
    assert any("huge.bin" in n and "sparse" in n for n in notes), notes
    # Third round: one real byte, then a hole to exactly the old threshold, got through.
    from workers.job import SPARSE_FROM_BYTES

    with open(outputs / "edge.bin", "wb") as edge:
        edge.write(b"x")
        edge.truncate(64 * 1024 * 1024)
    assert SPARSE_FROM_BYTES <= 1024 * 1024
    assert job._upload(outputs / "edge.bin") is None  # type: ignore[attr-defined]
    stored = sum(p.stat().st_size for p in (tmp_path / "blobs").rglob("*") if p.is_file())
    assert stored < 1024**2, stored
    uploaded = job._upload(outputs / "real.bin")  # type: ignore[attr-defined]
    assert uploaded is not None and uploaded[1] == 4096


def test_two_runs_of_one_payload_never_share_a_work_folder(tmp_path: Path) -> None:
    """Attacker pass, second round: a job hash replayed onto the queue (Redis access alone)
    while the real run was running was taken by a second worker on the same host, whose
    checkout deleted the folder the first run was using; the legitimate run failed and an
    output of the replay was recorded. Each execution has a folder of its own."""
    from orchestrator.settings import Settings
    from workers.job import Job

    settings = Settings.load(home=tmp_path / "home", storage_url=(tmp_path / "blobs").as_uri())
    payload = {"task_id": "0" * 32, "attempt": 0, "spec": {}}
    first = Job(payload, settings, None, "w1")  # type: ignore[arg-type]
    replay = Job(payload, settings, None, "w2")  # type: ignore[arg-type]
    assert first.workdir != replay.workdir
    assert first.workdir.parent == replay.workdir.parent
    assert first.workdir.name.startswith("0" * 32 + ".0.")


def test_outputs_past_what_a_report_records_are_not_uploaded(tmp_path: Path) -> None:
    """Attacker pass, third round: nothing bounded how many outputs were uploaded, while a
    report records at most MAX_ARTIFACTS of them: the rest only filled blob storage."""
    from orchestrator.queue import reports

    job, outputs, notes = _job(tmp_path)
    for i in range(reports.MAX_ARTIFACTS + 20):
        (outputs / f"f{i:05d}.txt").write_text(str(i))
    _metrics, _models, artifacts = job._outputs(outputs)  # type: ignore[attr-defined]
    assert len(artifacts) <= reports.MAX_ARTIFACTS
    stored = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert len(stored) <= reports.MAX_ARTIFACTS, len(stored)
    assert any("more output files past the" in n for n in notes), notes[-3:]
