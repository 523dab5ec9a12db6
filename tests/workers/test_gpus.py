"""GPU detection, `--gpus`/`--per-job` parsing, host-level device claims, CUDA_VISIBLE_DEVICES.

Detection runs a fake `nvidia-smi` put first on PATH; claims are contended from a real second
Python process, which is what proves they hold host-wide and not just inside one process.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from orchestrator.errors import ServiceUnavailable, UserError
from workers import gpus
from workers.gpus import (
    DeviceBusy,
    Gpu,
    claim,
    cuda_visible_devices,
    detect,
    parse_gpus,
    slots,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

TWO = [
    "0, GPU-11111111-aaaa-bbbb-cccc-000000000000, NVIDIA H100 80GB HBM3, 81559",
    "1, GPU-11111111-aaaa-bbbb-cccc-000000000001, NVIDIA H100 80GB HBM3, 81559",
]
FOUR = [
    "0, GPU-22222222-aaaa-bbbb-cccc-000000000000, NVIDIA A100-SXM4-40GB, 40960 MiB",
    "1, GPU-22222222-aaaa-bbbb-cccc-000000000001, NVIDIA A100-SXM4-40GB, 40960 MiB",
    "2, GPU-22222222-aaaa-bbbb-cccc-000000000002, NVIDIA A100-SXM4-40GB, 40960 MiB",
    "3, GPU-22222222-aaaa-bbbb-cccc-000000000003, NVIDIA A100-SXM4-40GB, 40960 MiB",
]


def gpu_list(count: int) -> list[Gpu]:
    return [Gpu(index, f"GPU-{index:08d}", "Test GPU", 1024) for index in range(count)]


def install_fake_nvidia_smi(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch, *, lines: list[str], exit_code: int = 0
) -> Path:
    """Write an `nvidia-smi` that records its arguments and prints `lines` (or fails)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    args_file = bin_dir / "args.json"
    output = "\n".join(lines)
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, sys
            with open({str(args_file)!r}, "w") as f:
                json.dump(sys.argv[1:], f)
            if {exit_code}:
                print("NVIDIA-SMI has failed: driver not loaded", file=sys.stderr)
                sys.exit({exit_code})
            print({output!r})
            """
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return args_file


# --- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize("lines", [TWO, FOUR], ids=["2-gpus", "4-gpus"])
def test_detect_parses_every_gpu(
    lines: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args_file = install_fake_nvidia_smi(tmp_path / "bin", monkeypatch, lines=lines)

    found = detect()

    assert json.loads(args_file.read_text()) == list(gpus.QUERY_ARGS)
    assert [gpu.index for gpu in found] == list(range(len(lines)))
    for gpu, line in zip(found, lines, strict=True):
        index, uuid, name, memory = (field.strip() for field in line.split(","))
        assert gpu == Gpu(index=int(index), uuid=uuid, name=name, memory_mib=int(memory.split()[0]))


def test_detect_is_robust_to_blank_lines_order_and_unknown_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        "",
        "1 ,  GPU-b , Odd, Name , [N/A]",
        "   0,GPU-a,Plain,100 MiB  ",
        "2, [N/A], Nameless uuid, 7",
    ]
    install_fake_nvidia_smi(tmp_path / "bin", monkeypatch, lines=lines)

    assert detect() == [
        Gpu(0, "GPU-a", "Plain", 100),
        Gpu(1, "GPU-b", "Odd, Name", 0),
        Gpu(2, "", "Nameless uuid", 7),
    ]


def test_detect_without_nvidia_smi_is_a_cpu_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))

    assert detect() == []
    assert detect(str(tmp_path / "no-such-nvidia-smi")) == []


def test_failing_nvidia_smi_is_service_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_nvidia_smi(tmp_path / "bin", monkeypatch, lines=[], exit_code=9)

    with pytest.raises(ServiceUnavailable) as caught:
        detect()

    message = str(caught.value)
    assert "exit 9" in message
    assert "NVIDIA-SMI has failed: driver not loaded" in message
    assert "\n" not in message


def test_garbled_output_is_service_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_fake_nvidia_smi(tmp_path / "bin", monkeypatch, lines=["not csv at all"])

    with pytest.raises(ServiceUnavailable, match="unexpected line"):
        detect()


# --- --gpus and --per-job -----------------------------------------------------------------


def test_parse_gpus_all_none_and_lists() -> None:
    detected = gpu_list(4)

    assert parse_gpus("all", detected) == [0, 1, 2, 3]
    assert parse_gpus(" ALL ", detected) == [0, 1, 2, 3]
    assert parse_gpus("none", detected) == []
    assert parse_gpus("0,2", detected) == [0, 2]
    assert parse_gpus("3, 1", detected) == [3, 1]
    assert parse_gpus("all", []) == []


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("5", "GPU 5 does not exist on this host (available: 0, 1, 2, 3)"),
        ("0,0", "GPU 0 is listed twice"),
        ("x", "'x' is not a GPU index; use 'all', 'none' or a comma list"),
        ("", "'' is not a GPU index"),
        ("0,,1", "'' is not a GPU index"),
        ("-1", "'-1' is not a GPU index"),
    ],
)
def test_parse_gpus_rejects_bad_values(option: str, expected: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_gpus(option, gpu_list(4))

    message = str(caught.value)
    assert message.startswith(f"--gpus {option!r}: ")
    assert expected in message
    assert "\n" not in message


def test_parse_gpus_on_a_host_without_gpus_says_so() -> None:
    with pytest.raises(UserError, match=r"--gpus '0': GPU 0 does not exist .*no GPUs detected"):
        parse_gpus("0", [])


def test_slots_per_job() -> None:
    assert slots([0, 1, 2, 3], 1) == [(0,), (1,), (2,), (3,)]
    assert slots([0, 1, 2, 3], 2) == [(0, 1), (2, 3)]
    assert slots([3, 1], 2) == [(3, 1)]
    assert slots([], 1) == [()]
    assert slots([], 4) == [()]


def test_slots_reject_a_split_that_leaves_devices_over() -> None:
    with pytest.raises(UserError) as caught:
        slots([0, 1, 2], 2)

    message = str(caught.value)
    assert "--per-job 2" in message
    assert "3 GPU(s) chosen by --gpus (0,1,2)" in message
    assert "1 would be left over" in message


@pytest.mark.parametrize("per_job", [0, -1])
def test_slots_reject_per_job_below_one(per_job: int) -> None:
    with pytest.raises(UserError, match=f"--per-job must be at least 1, got {per_job}"):
        slots([0, 1], per_job)


# --- CUDA_VISIBLE_DEVICES -----------------------------------------------------------------


def test_cuda_visible_devices_uses_uuids() -> None:
    detected = gpu_list(4)

    assert cuda_visible_devices((2,), detected) == "GPU-00000002"
    assert cuda_visible_devices((3, 1), detected) == "GPU-00000003,GPU-00000001"


def test_cuda_visible_devices_falls_back_to_indices_and_hides_all_for_cpu() -> None:
    detected = [Gpu(0, "GPU-a", "x", 1), Gpu(1, "", "x", 1)]

    assert cuda_visible_devices((0, 1), detected) == "0,1"
    assert cuda_visible_devices((0,), detected) == "GPU-a"
    assert cuda_visible_devices((), detected) == ""


# --- host-level claims --------------------------------------------------------------------

CLAIMER = """
import json, sys
from pathlib import Path
from workers.gpus import DeviceBusy, claim

lock_dir = Path(sys.argv[1])
results = []
for slot in json.loads(sys.argv[2]):
    try:
        claim(tuple(slot), lock_dir)  # kept until the process exits
    except DeviceBusy as exc:
        results.append({"busy": exc.index, "message": str(exc)})
    else:
        results.append({"claimed": slot})
print(json.dumps(results))
"""


def claim_in_other_process(
    lock_dir: Path, *slots_to_try: tuple[int, ...]
) -> list[dict[str, object]]:
    """Try the slots one after another in a fresh interpreter; what each attempt gave."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", CLAIMER, str(lock_dir), json.dumps([list(s) for s in slots_to_try])],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def test_a_held_device_is_busy_for_another_process(tmp_path: Path) -> None:
    with claim((1,), tmp_path) as held:
        assert held.indices == (1,)
        [outcome] = claim_in_other_process(tmp_path, (1,))

    assert outcome["busy"] == 1
    message = str(outcome["message"])
    assert "GPU 1 is already claimed" in message
    assert f"pid {os.getpid()} on {socket.gethostname()}" in message
    assert str(tmp_path / "gpu-1.lock") in message


def test_a_held_device_is_busy_for_another_claim_in_this_process(tmp_path: Path) -> None:
    with claim((0,), tmp_path), pytest.raises(DeviceBusy) as caught:
        claim((0,), tmp_path)

    assert caught.value.index == 0
    assert caught.value.holder == f"pid {os.getpid()} on {socket.gethostname()}"


def test_a_slot_with_one_busy_device_takes_none_of_them(tmp_path: Path) -> None:
    with claim((1,), tmp_path):
        # The other process fails on (0, 1) and then must still be able to take 0 itself:
        # flock locks of one process conflict across separate opens, so a leaked lock on 0
        # would make the second attempt fail too.
        first, second = claim_in_other_process(tmp_path, (0, 1), (0,))
        assert first["busy"] == 1
        assert second == {"claimed": [0]}

        # And here, in this process, 0 is free as well.
        with pytest.raises(DeviceBusy, match="GPU 1"):
            claim((0, 1), tmp_path)
        claim((0,), tmp_path).release()


def test_releasing_lets_another_process_claim(tmp_path: Path) -> None:
    taken = claim((0, 1), tmp_path)
    assert [o["busy"] for o in claim_in_other_process(tmp_path, (0,), (1,))] == [0, 1]

    taken.release()
    taken.release()  # idempotent
    assert not (tmp_path / "gpu-0.owner").exists()

    assert claim_in_other_process(tmp_path, (0, 1)) == [{"claimed": [0, 1]}]


def test_a_claim_may_be_released_from_another_thread(tmp_path: Path) -> None:
    taken = claim((0,), tmp_path)
    releaser = threading.Thread(target=taken.release)
    releaser.start()
    releaser.join()

    assert claim_in_other_process(tmp_path, (0,)) == [{"claimed": [0]}]


def test_a_dead_holder_frees_its_devices(tmp_path: Path) -> None:
    # The other process exits while holding GPU 0; the kernel drops its lock.
    assert claim_in_other_process(tmp_path, (0,)) == [{"claimed": [0]}]

    with claim((0,), tmp_path) as again:
        assert again.indices == (0,)


def test_waiting_claim_takes_a_free_device(tmp_path: Path) -> None:
    with claim((0, 1), tmp_path, wait=True) as held:
        assert held.indices == (0, 1)


def test_an_empty_slot_claims_nothing(tmp_path: Path) -> None:
    with claim((), tmp_path) as held:
        assert held.indices == ()
    assert list(tmp_path.iterdir()) == []


def test_default_lock_dir_is_shared_by_all_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    lock_dir = gpus.default_lock_dir()

    assert lock_dir == tmp_path / "retrain-gpu-locks"
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o777
    with claim((0,), None) as held:
        assert held.indices == (0,)
        assert stat.S_IMODE((lock_dir / "gpu-0.lock").stat().st_mode) == 0o666
        assert (lock_dir / "gpu-0.owner").read_text() == (
            f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
        )


def test_require_free_names_every_held_gpu_and_what_is_free(tmp_path: Path) -> None:
    gpus.require_free("all", [0, 1, 2], tmp_path)  # nothing held: nothing to say
    with claim((0,), tmp_path), claim((2,), tmp_path):
        with pytest.raises(UserError) as caught:
            gpus.require_free("all", [0, 1, 2], tmp_path)
        message = str(caught.value)
        assert message.startswith("--gpus 'all': GPU 0 is already claimed by pid ")
        assert "; GPU 2 is already claimed by pid " in message
        assert message.endswith("; free: 1 (pass --gpus 1 to use only those)")
        with pytest.raises(UserError, match=r"^--gpus '0,2': .*; no chosen GPU is free$"):
            gpus.require_free("0,2", [0, 2], tmp_path)
        # Trying is not taking: the free device is still free, for this process and others.
        assert claim_in_other_process(tmp_path, (1,)) == [{"claimed": [1]}]
