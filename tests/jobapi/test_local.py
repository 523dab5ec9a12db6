"""The job API outside a retrain job (a laptop: defaults, a local folder) and the worker's end
of its channel, with no server at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from workers.channel import Channel, downsample
from workers.job import JOB_API_DIR

SCRIPT = """\
import json, pathlib, types
import retrain_run as run

config = types.SimpleNamespace(lr=0.1, epochs=3, name="occ", _private=1)
run.connect(config)
hyper = run.connect({"batch": 32}, name="Data")
print("params", json.dumps(run.params(), sort_keys=True))
print("in_job", run.in_job())
print("input", run.input("data", default="somewhere"))
try:
    run.input("labels")
except LookupError as exc:
    print("lookup", exc)
for i in range(5):
    run.log_metric("loss", 1 / (i + 1))
run.log_metric("loss", float("nan"))
pathlib.Path("model.pkl").write_bytes(b"weights")
print("model", run.log_model("model.pkl", name="occupancy", metadata={"framework": "x"}))
print("artifact", run.log_artifact("model.pkl", name="copy.bin"))
"""


def test_outside_a_job_the_api_uses_defaults_and_a_local_folder(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(JOB_API_DIR)}
    # -S: no site-packages at all; the module needs the standard library alone.
    done = subprocess.run([sys.executable, "-S", "train.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert json.loads(out[0].removeprefix("params ")) == {
        "General/lr": 0.1, "General/epochs": 3, "General/name": "occ", "Data/batch": 32}
    assert out[1:3] == ["in_job False", "input somewhere"]
    assert out[3].startswith("lookup retrain_run.input('labels'): not in a retrain job; set "
                             "RETRAIN_INPUT_LABELS")
    assert out[4] == "model retrain-local/models/occupancy.pkl"
    assert out[5] == "artifact retrain-local/artifacts/copy.bin"
    assert "loss = 0.2 (step 4, 5 points)" in done.stderr
    lines = [json.loads(line) for line in
             (tmp_path / "retrain-local" / "events.jsonl").read_text().splitlines()]
    steps = [s for e in lines if "p" in e for s in e["p"]["loss"][0]]
    values = [v for e in lines if "p" in e for v in e["p"]["loss"][1]]
    assert steps == list(range(5)) and values == [1 / (i + 1) for i in range(5)]  # NaN: none


def test_the_channel_reads_what_a_job_appends_and_skips_garbage(tmp_path: Path) -> None:
    path = tmp_path / "run" / "channel.jsonl"
    notes: list[str] = []
    channel = Channel(path, "t" * 32, None, notes.append)
    with path.open("a") as job:
        job.write('{"p":{"loss":[[0],[1.0]]}}\n{"p":{"loss":[[1],[0.5]]')
        job.flush()
        channel.drain()
        assert channel.series["loss"].count == 1  # half a line waits for its end
        job.write('}}\nnot json\n{"p":{"loss":[["x"],[1]]}}\n[1,2]\n{"p":{"x":[[1],[NaN]]}}\n')
        job.write('{"p":{"x":[[1],[1e999]]}}\n{"p":{"x":[[1, 2],[1]]}}\n')
        job.write('{"k":"defaults","values":{"General/lr":0.1}}\n')
        job.write('{"k":"model","name":"m","path":"models/m.pkl","metadata":{"a":1}}\n')
    channel.finish("completed")
    loss = channel.series["loss"]
    assert (loss.count, loss.last, loss.min, loss.max, loss.step) == (2, 0.5, 0.5, 1.0, 1)
    assert "x" not in channel.series
    assert channel.bad_lines == 6 and notes == [
        "retrain_run: 6 lines of the job's channel were no events"]
    assert channel.defaults == {"General/lr": 0.1}
    assert channel.models == {"models/m.pkl": {"name": "m", "metadata": {"a": 1}}}


def test_downsampling_keeps_extremes_and_the_end() -> None:
    points = [(float(i), float(i % 100)) for i in range(10_000)]
    points[5000] = (5000.0, -50.0)
    kept = downsample(points, 200)
    assert len(kept) <= 200
    assert [5000, -50.0] in kept and kept[-1] == [9999, 99.0]
    assert max(v for _s, v in kept) == 99.0
    assert downsample(points[:3], 200) == [[0, 0.0], [1, 1.0], [2, 2.0]]


def test_log_model_cannot_grow_the_work_horse_without_bound(tmp_path: Path) -> None:
    """150 `log_model` calls with 900 KB of metadata each once cost the work horse 345 MB: the
    channel keeps at most the report's model count, and metadata that could never fit in a
    report is dropped as it arrives (named in the run's log), not held."""
    from orchestrator.queue import reports

    path = tmp_path / "run" / "channel.jsonl"
    notes: list[str] = []
    channel = Channel(path, "t" * 32, None, notes.append)
    big = {"blob": "x" * 900_000}
    with path.open("a") as job:
        for i in range(150):
            event = {"k": "model", "name": f"m{i}", "path": f"models/{i}.pkl", "metadata": big}
            job.write(json.dumps(event) + "\n")
        job.write(json.dumps({"k": "model", "name": "small", "path": "models/0.pkl",
                              "metadata": {"a": 1}}) + "\n")
    channel.finish("completed")
    assert len(channel.models) == reports.MAX_MODELS
    assert channel.models["models/0.pkl"] == {"name": "small", "metadata": {"a": 1}}
    assert all(m["metadata"] == {} for p, m in channel.models.items() if p != "models/0.pkl")
    assert any("50 more log_model" in n for n in notes), notes
    assert any("metadata of 100 log_model" in n for n in notes), notes
