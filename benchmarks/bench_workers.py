"""Workers (issue 5's targets), figures printed beside their baselines in the same run.

- Cold environment build of one pinned set: uv (what workers use) vs `python -m venv` + pip,
  both with empty caches; target: at least 5x faster.
- Environment cache hit: <= 0.2 s. Warm checkout of a 1,000-commit repository: <= 0.3 s.
- Enqueued -> user process started on a warm worker, 50 samples: p50 <= 150 ms, p99 <= 400 ms,
  with the job sandbox as deployed (Landlock where the kernel has it) and with
  `--sandbox off` (the difference is the sandbox's cost), beside a bare RQ forking worker
  starting a job, and a Python child, on this machine.
- A job's process started and ended (`/bin/true`), sandboxed (policy, Landlock ruleset,
  confinement between fork and exec) and unconfined, interleaved, 200 samples each: the
  sandbox's own cost, which the end-to-end figure above cannot resolve on a loaded machine.
Uses RETRAIN_TEST_REDIS_URL (default: this machine's Redis, database 15).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_tasks import REDIS

PINS = ["numpy==2.1.3", "pandas==2.2.3", "scikit-learn==1.5.2"]
SAMPLES = 50
COMMITS = 1000


def child_started() -> float:
    """A bare RQ job that starts a Python child and returns when the child began."""
    out = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def cold_builds(work: Path) -> tuple[float, float]:
    from workers.envs import EnvCache

    env = {**os.environ, "UV_CACHE_DIR": str(work / "uv-cache")}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        start = time.perf_counter()
        EnvCache(work / "uv-envs").ensure(PINS)
        uv_s = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(work / "pip-env")], check=True)
    subprocess.run(
        [str(work / "pip-env/bin/python"), "-m", "pip", "install", "-q", "--no-cache-dir", *PINS],
        check=True,
    )
    pip_s = time.perf_counter() - start
    return uv_s, pip_s


def cache_hit(work: Path) -> float:
    from workers.envs import EnvCache

    cache = EnvCache(work / "uv-envs")
    samples = []
    for _ in range(20):
        start = time.perf_counter()
        result = cache.ensure(PINS)
        samples.append(time.perf_counter() - start)
        assert result.hit
    return statistics.median(samples)


def warm_checkout(work: Path) -> float:
    from orchestrator.git import Mirror
    from workers.checkout import checkout, remove

    repo = work / "history"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    stream = []
    for i in range(1, COMMITS + 1):
        body = f"line {i}\n"
        parent = f"from :{i - 1}\n" if i > 1 else ""
        stream.append(
            f"commit refs/heads/main\nmark :{i}\n"
            f"committer b <b@b> {1_700_000_000 + i} +0000\ndata 2\nc\n{parent}"
            f"M 644 inline file{i % 50}.txt\ndata {len(body)}\n{body}\n"
        )
    subprocess.run(
        ["git", "fast-import", "--quiet"], cwd=repo, input="".join(stream), text=True, check=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    mirrors = Mirror(work / "mirrors")
    checkout(mirrors, str(repo), head, None, work / "tree0")  # warms the mirror
    samples = []
    for i in range(1, 6):
        start = time.perf_counter()
        checkout(mirrors, str(repo), head, None, work / f"tree{i}")
        samples.append(time.perf_counter() - start)
        remove(work / f"tree{i}")
    return statistics.median(samples)


def sandbox_start(work: Path, samples: int = 200) -> tuple[list[float], list[float]]:
    """ms to start and end `/bin/true` as a work horse starts a job: unconfined (setpriv,
    vfork) and confined (the job's policy and Landlock ruleset built, applied between fork
    and exec), interleaved so that both see the same load. Empty where there is no
    Landlock."""
    from workers import sandbox
    from workers.runner import _die_with_parent

    if sandbox.landlock_abi() <= 0:
        return [], []
    home = work / "sandbox-home"
    outputs = home / "cache" / "work" / "t.0" / "outputs"
    outputs.mkdir(parents=True)
    hidden = sandbox.hidden_for(home, home / "cache", (home / "storage").as_uri())
    sandbox.warm(hidden)  # as the slot does before it forks
    env = {"PATH": "/usr/bin:/bin"}
    plain: list[float] = []
    confined: list[float] = []
    for _ in range(samples):
        began = time.perf_counter()
        subprocess.run(
            _die_with_parent(["/bin/true"], env, work),
            env=env,
            check=True,
            start_new_session=True,
        )
        plain.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        policy = sandbox.policy_for(
            workdir=outputs.parent,
            writable=[outputs],
            readable=[],
            hidden=hidden,
            python=sys.executable,
        )
        confinement = sandbox.confinement(policy)
        try:
            subprocess.run(
                ["/bin/true"],
                env=env,
                check=True,
                start_new_session=True,
                preexec_fn=confinement,
            )
        finally:
            if confinement is not None:
                confinement.close()
        confined.append((time.perf_counter() - began) * 1000)
    return plain, confined


def start_latency(work: Path) -> tuple[list[float], list[float], list[float], list[float]]:
    """ms from enqueue to: our user process running (sandboxed, as deployed, and with
    `--sandbox off`), a bare RQ job, a bare job's child."""
    import datetime as dt

    import redis
    from rq import Queue
    from rq.serializers import JSONSerializer

    from orchestrator.runtime import Runtime
    from orchestrator.settings import Settings
    from orchestrator.tasks.spec import TaskDefinition

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    home = work / "home"
    stamps = work / "stamps"
    stamps.mkdir()
    repo = work / "repo"
    repo.mkdir()
    (repo / "start.py").write_text(
        "import os, pathlib, time\n"
        "pathlib.Path(os.environ['STAMPS'], os.environ['RETRAIN_TASK_ID']).write_text("
        "str(time.time()))\n"
    )
    for args in (
        ["init", "-q", "-b", "main"],
        ["add", "-A"],
        ["-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "x"],
    ):
        subprocess.run(["git", *args], cwd=repo, check=True)
    env = {
        **os.environ,
        "RETRAIN_HOME": str(home),
        "RETRAIN_REDIS_URL": REDIS,
        "RETRAIN_WORKER_SECRET": SECRET,  # signed payloads and reports, as deployed
        "STAMPS": str(stamps),
    }
    env.pop("RETRAIN_DATABASE_URL", None)
    runtime = Runtime(Settings.load(home=home, redis_url=REDIS, worker_secret=SECRET))
    template = runtime.tasks.create(
        TaskDefinition(
            project="bench", name="start", repo=str(repo), script="start.py", queue="bench"
        )
    )

    def sample(sandbox: str) -> list[float]:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from orchestrator.cli import main; main()",
                "worker",
                "--queue",
                "bench",
                "--gpus",
                "none",
                "--pass-env",
                "STAMPS",
                "--sandbox",
                sandbox,
                "--sandbox-write",  # the stamps are written outside the job's own folder
                str(stamps),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out: list[float] = []
        try:
            for i in range(SAMPLES + 1):  # the first run warms the mirror and the environment
                info, _ = runtime.tasks.run(template.id)
                stamp = stamps / info.id
                deadline = time.monotonic() + 120
                while not stamp.exists():
                    assert time.monotonic() < deadline, "the worker did not start the job"
                    time.sleep(0.002)
                time.sleep(0.05)
                enqueued = client.hget(f"rq:job:{info.id}", "enqueued_at")
                assert enqueued is not None
                began = float(stamp.read_text())
                at = dt.datetime.fromisoformat(enqueued.decode().replace("Z", "+00:00"))
                if i:
                    out.append((began - at.timestamp()) * 1000)
                while client.hget(f"rq:job:{info.id}", "status") not in (b"finished", b"failed"):
                    time.sleep(0.01)  # the worker is idle (and warm) before the next sample
        finally:
            worker.terminate()
            worker.wait(30)
        return out

    try:
        ours = sample("auto")  # Landlock where the kernel has it, as deployed
        unconfined = sample("off")
    finally:
        runtime.close()

    def floor(function: str) -> list[float]:
        queue = Queue("floor", connection=client, serializer=JSONSerializer)
        bare = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import redis, sys; from rq import Worker, Queue; "
                "from rq.serializers import JSONSerializer as J; "
                f"c = redis.Redis.from_url({REDIS!r}); "
                "Worker([Queue('floor', connection=c, serializer=J)], "
                "connection=c, serializer=J).work(logging_level='ERROR')",
            ],
            cwd=Path(__file__).parents[1],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out = []
        try:
            for i in range(SAMPLES + 1):
                job = queue.enqueue(function, result_ttl=600)
                deadline = time.monotonic() + 60
                while job.get_status(refresh=True) != "finished":
                    assert time.monotonic() < deadline, "the bare worker did not run the job"
                    time.sleep(0.002)
                if i:
                    out.append(
                        (
                            float(job.return_value())
                            - job.enqueued_at.replace(tzinfo=dt.timezone.utc).timestamp()
                        )
                        * 1000
                    )
        finally:
            bare.terminate()
            bare.wait(30)
        return out

    bare_job = floor("time.time")
    bare_child = floor("benchmarks.bench_workers.child_started")
    client.flushdb()
    client.close()
    return ours, unconfined, bare_job, bare_child


SECRET = "bench-worker-secret-0123456789abcdef"


def report_signing() -> tuple[list[float], list[float]]:
    """µs per report, signed and verified vs plain, for a finished report of a typical run
    (50 metrics, 3 models, 20 artifacts): build, serialize (and sign), parse (and verify)."""
    from orchestrator.queue import reports, signing

    report = reports.finished(
        "0" * 32,
        "host-1-gpu0",
        "completed",
        exit_code=0,
        duration_s=3600.5,
        metrics={f"val/metric_{i}": i / 7 for i in range(50)},
        models=[
            {"name": f"m{i}", "uri": f"s3://b/models/{i:064x}", "metadata": {}} for i in range(3)
        ],
        artifacts=[{"path": f"plots/{i}.png", "uri": f"s3://b/blobs/{i:064x}"} for i in range(20)],
    )
    signed_us: list[float] = []
    plain_us: list[float] = []
    for _ in range(2200):
        start = time.perf_counter()
        data = json.dumps(report, default=str, separators=(",", ":"))
        signature = signing.sign(SECRET, data.encode())
        fields = {reports.FIELD: data.encode(), reports.SIG_FIELD: signature}
        reports.parse(fields, SECRET)
        signed_us.append((time.perf_counter() - start) * 1e6)
        start = time.perf_counter()
        data = json.dumps(report, default=str, separators=(",", ":"))
        reports.parse({reports.FIELD: data.encode()})
        plain_us.append((time.perf_counter() - start) * 1e6)
    # The first 200 of each warm the interpreter's caches (a scheduler ingests all day long).
    return signed_us[200:], plain_us[200:]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> bool:
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-workers-"))
    try:
        ours, unconfined, bare_job, bare_child = start_latency(work)
        plain_start, confined_start = sandbox_start(work)
        checkout_s = warm_checkout(work)
        uv_s, pip_s = cold_builds(work)
        hit_s = cache_hit(work)
        signed_us, plain_us = report_signing()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    speedup = pip_s / uv_s
    p50, p99 = pct(ours, 50), pct(ours, 99)
    sign_p99 = pct(signed_us, 99)
    ok = (
        speedup >= 5
        and hit_s <= 0.2
        and checkout_s <= 0.3
        and p50 <= 150
        and p99 <= 400
        and sign_p99 <= 1000
    )
    print(f"workers: environment for {', '.join(PINS)} (empty caches)")
    print(f"  uv (retrain)            {uv_s:7.1f} s")
    print(f"  python -m venv + pip    {pip_s:7.1f} s   ({speedup:.1f}x; target >= 5x)")
    print(f"  cache hit               {hit_s * 1000:7.2f} ms median of 20   (target <= 200)")
    print(
        f"workers: warm checkout, {COMMITS} commits   {checkout_s * 1000:7.1f} ms median "
        "(target <= 300)"
    )
    print(f"workers: enqueued -> user process started on a warm worker, {SAMPLES} samples")
    print(
        f"  retrain worker          p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   (target p50 <= 150, "
        "p99 <= 400)"
    )
    print(
        f"  ... with --sandbox off  p50 {pct(unconfined, 50):6.1f} ms   p99 "
        f"{pct(unconfined, 99):6.1f} ms   (the sandbox's cost: the difference)"
    )
    print(
        f"  bare RQ job             p50 {pct(bare_job, 50):6.1f} ms   p99 "
        f"{pct(bare_job, 99):6.1f} ms"
    )
    print(
        f"  bare RQ job's child     p50 {pct(bare_child, 50):6.1f} ms   p99 "
        f"{pct(bare_child, 99):6.1f} ms"
    )
    if confined_start:
        print(
            f"workers: a job's process started and ended, {len(plain_start)} samples each, "
            "interleaved"
        )
        print(
            f"  sandboxed               p50 {pct(confined_start, 50):6.1f} ms   p99 "
            f"{pct(confined_start, 99):6.1f} ms   (policy, ruleset, fork, confine, exec)"
        )
        print(
            f"  unconfined              p50 {pct(plain_start, 50):6.1f} ms   p99 "
            f"{pct(plain_start, 99):6.1f} ms   (setpriv, vfork, exec)"
        )
    print("workers: a finished report (50 metrics), serialize + parse, 2,000 samples")
    print(
        f"  signed and verified     p50 {pct(signed_us, 50):6.1f} µs   p99 {sign_p99:6.1f} µs"
        "   (target p99 <= 1000)"
    )
    print(
        f"  plain (no secret)       p50 {pct(plain_us, 50):6.1f} µs   p99 "
        f"{pct(plain_us, 99):6.1f} µs"
    )
    print(f"  {'OK' if ok else 'MISSED'}")
    return ok
