"""Scale-out under torchrun (gloo, 2 CPU processes): sharded certify and attack equal one process, a
killed rank resumes, DDP training checkpoints, and bad launches stop every rank with one line.

Each launch is ``python -m torch.distributed.run ... -m wbench ...`` in a subprocess with
``OMP_NUM_THREADS=1``, exactly as the README writes it (full flag names, since torchrun's own
parser refuses abbreviations of its options, such as ``--n`` or ``--max``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from wbench import distributed
from wbench.cli import build_parser, main
from wbench.models import build_model, load_model
from wbench.runio import locked_output, read_csv_rows

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 300  # a hang fails the test instead of stalling CI
CERTIFY = ["--n0", "20", "--num-samples", "200", "--batch", "64", "--device", "cpu", "--no-progress"]
SLOW_CERTIFY = ["--n0", "100", "--num-samples", "3000", "--batch", "500", "--device", "cpu", "--no-progress"]
RESULT_COLUMNS = ("index", "label", "prediction", "p_lower", "radius", "correct")  # all but seconds
# a smoothed flow attack: its gradient noise and PREDICT are both keyed by the data-set index
ATTACK = ["--method", "flow", "--eps", "0.05,0.2", "--steps", "3", "--batch", "2",
          "--smoothing", "wasserstein", "--sigma", "0.02", "--noise-samples", "4", "--num-samples", "50",
          "--device", "cpu", "--no-progress"]  # fmt: skip
ATTACK_COLUMNS = ("index", "eps", "label", "prediction", "success", "abstain", "w1", "shrunk")  # not seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WBENCH_DIST_TIMEOUT="120")
    return env


def _torchrun_cmd(args, nproc=2, launcher=()) -> list[str]:
    launch = list(launcher) or ["--master-port", str(_free_port())]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), *launch,
            "-m", "wbench", *map(str, args)]  # fmt: skip


def torchrun(args, nproc=2) -> subprocess.CompletedProcess:
    return subprocess.run(
        _torchrun_cmd(args, nproc), env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S
    )


def results(rows):
    return [tuple(r[k] for k in RESULT_COLUMNS) for r in rows]


def test_plain_process_has_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.process_group():
        assert not distributed.active()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert distributed.all_gather({"a": 1}) == [{"a": 1}]
        assert distributed.all_sum([2.0, 3.0]) == [2.0, 3.0]
        distributed.agree("settings", {"a": 1})
        with pytest.raises(ValueError, match="boom"):
            distributed.on_main(_raise, "boom")


def _raise(message):
    raise ValueError(message)


def test_ranks_draw_the_noise_of_one_global_batch():
    """What DDP training relies on: rank q of W passes first_copy = q * B for its B rows, so the
    ranks' draws are the rows of one process's draw for the global batch, and never repeat."""
    from wbench.noise import perturb

    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.1
    whole = perturb(x, 0.05, "wasserstein", seed=3, index=7)
    ranks = [perturb(x[q * 4 : (q + 1) * 4], 0.05, "wasserstein", seed=3, index=7, first_copy=q * 4)
             for q in range(2)]  # fmt: skip
    assert torch.equal(torch.cat(ranks), whole)
    same_copies = perturb(x[4:], 0.05, "wasserstein", seed=3, index=7, first_copy=0)
    assert not torch.equal(same_copies - x[4:], ranks[1] - x[4:])


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_bad_timeout_is_a_value_error(monkeypatch, value):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    with pytest.raises(ValueError, match=distributed.TIMEOUT_ENV):
        distributed.timeout()


def test_commands_without_scale_out_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["report", "--out", "/nonexistent/never-created"]) == 2
    assert "start it without torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["certify", "train", "reproduce", "attack"])
def test_torchrun_accepts_every_full_flag_name(command):
    """torchrun parses its own options out of the whole command line and refuses any prefix that is
    ambiguous with them: every flag's full name must pass, the short aliases are why those exist."""
    from torch.distributed.run import get_args_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    flags = [max(a.option_strings, key=len) for a in sub._actions if a.option_strings and a.dest != "help"]
    assert flags
    for flag in flags:
        args = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "wbench", command, flag, "1"])
        assert args.training_script_args == [command, flag, "1"]
    if command != "train":
        for short in ("--n", "--max"):
            with pytest.raises(SystemExit):
                get_args_parser().parse_args(["-m", "wbench", command, short, "1"])
        long_names = {a.dest: a.option_strings for a in sub._actions}
        assert "--num-samples" in long_names["n"] and "--n" in long_names["n"]


def test_two_processes_certify_like_one(checkpoint, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["certify", checkpoint, "--out", str(one), "--indices", "0:7", *CERTIFY]) == 0
    done = torchrun(["certify", checkpoint, "--out", two, "--indices", "0:7", *CERTIFY])
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(read_csv_rows(two / "certify.csv")) == results(read_csv_rows(one / "certify.csv"))
    assert not (two / "shards").exists() and not (two / distributed.RANKS_FILE).exists()
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    for key in ("images", "radii", "certified_accuracy", "clean_smoothed_accuracy", "abstentions"):
        assert s2[key] == s1[key], key
    assert s2["mean_certified_radius"] == pytest.approx(s1["mean_certified_radius"], rel=1e-12)
    assert (s1["launch"]["world_size"], s2["launch"]["world_size"]) == (1, 2)
    assert s2["launch"]["images"] == 7
    assert done.stdout.count("certified 7 images") == 1  # rank 0 alone reports


def attack_results(rows):
    return sorted((int(r["index"]), float(r["eps"]), *(r[k] for k in ATTACK_COLUMNS[2:])) for r in rows)


def test_two_processes_attack_like_one(checkpoint, tmp_path):
    """Batches of 2 over 6 images: rank 0 attacks [0, 1] and [4, 5], rank 1 [2, 3], per budget."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["attack", checkpoint, "--out", str(one), "--indices", "0:6", *ATTACK]) == 0
    done = torchrun(["attack", checkpoint, "--out", two, "--indices", "0:6", *ATTACK])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_csv_rows(two / "attack.csv")
    assert len(rows) == 12 and attack_results(rows) == attack_results(read_csv_rows(one / "attack.csv"))
    pairs = [(i, e) for i in range(6) for e in (0.05, 0.2)]
    assert [(int(r["index"]), float(r["eps"])) for r in rows] == pairs  # merged, sorted by (index, eps)
    assert not (two / "shards").exists() and not (two / distributed.RANKS_FILE).exists()
    ex1, ex2 = (torch.load(d / "examples.pt", weights_only=True)["examples"] for d in (one, two))
    by_key = {(d["index"], d["eps"]): d for d in ex1}
    assert sorted(by_key) == sorted((d["index"], d["eps"]) for d in ex2) and len(ex2) == 12
    assert all(torch.equal(d["adversarial"], by_key[(d["index"], d["eps"])]["adversarial"]) for d in ex2)
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    per_eps = [[{k: v for k, v in p.items() if k not in ("seconds", "images_per_s")} for p in s["per_eps"]]
               for s in (s1, s2)]  # fmt: skip
    assert per_eps[0] == per_eps[1] and s2["images"] == 6
    assert (two / "robust_accuracy.png").is_file() and (two / "examples.png").is_file()
    assert done.stdout.count("attacked 6 images") == 1  # rank 0 alone reports


def test_attack_picks_up_the_shards_of_a_killed_launch(checkpoint, tmp_path):
    """What a killed 2-rank launch leaves (rows in its shards, a torn last line): a plain run keeps
    those rows, attacks the rest, and merges all into one CSV sorted by (index, eps)."""
    out, ref = tmp_path / "run", tmp_path / "ref"
    assert main(["attack", checkpoint, "--out", str(ref), "--indices", "0:6", *ATTACK]) == 0
    ref_rows = {(r["index"], r["eps"]): r for r in read_csv_rows(ref / "attack.csv")}
    first = [*ATTACK]
    first[first.index("0.05,0.2")] = "0.05"
    assert main(["attack", checkpoint, "--out", str(out), "--indices", "0:4", *first]) == 0
    header = ",".join(read_csv_rows(ref / "attack.csv")[0])
    planted = {}
    for rank, index in ((0, "0"), (1, "3")):
        row = dict(ref_rows[(index, "0.2")], seconds="123.0000")  # marks a row that must not be redone
        planted[(index, "0.2")] = row
        torn = "5,0.2,3" if rank == 1 else ""
        (out / "shards").mkdir(exist_ok=True)
        (out / "shards" / f"attack.rank{rank}.csv").write_text(
            f"{header}\r\n{','.join(row.values())}\r\n{torn}"
        )
    assert main(["attack", checkpoint, "--out", str(out), "--indices", "0:6", *ATTACK]) == 0
    rows = read_csv_rows(out / "attack.csv")
    keys = [(int(r["index"]), float(r["eps"])) for r in rows]
    assert keys == [(i, e) for i in range(6) for e in (0.05, 0.2)]  # complete, each pair once, merged
    assert all(r == planted[(r["index"], r["eps"])] for r in rows if (r["index"], r["eps"]) in planted)
    assert attack_results(rows) == attack_results(ref_rows.values())
    assert not (out / "shards").exists()


def _worker_pid(agent_pid: int, rank: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))
        if ppid == agent_pid and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the worker through /proc")
def test_killed_rank_resumes_without_loss_or_duplicates(checkpoint, tmp_path):
    out, ref = tmp_path / "run", tmp_path / "ref"
    agent = subprocess.Popen(
        _torchrun_cmd(["certify", checkpoint, "--out", out, "--indices", "0:12", *SLOW_CERTIFY]),
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        shard1 = out / "shards" / "certify.rank1.csv"
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while not read_csv_rows(shard1) and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = _worker_pid(agent.pid, 1)
        assert pid is not None and agent.poll() is None, "rank 1 finished before it could be killed"
        os.kill(pid, signal.SIGKILL)
        assert agent.wait(timeout=LAUNCH_TIMEOUT_S) != 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert 1 <= len(read_csv_rows(shard1)) < 6  # rank 1 (odd indices) was killed mid-share
    kept = {r["index"]: r for p in (out / "shards").glob("*.csv") for r in read_csv_rows(p)}
    assert not (out / "certify.csv").exists()

    # the same world size on the even images: reopens both shards, finishes, merges them
    done = torchrun(["certify", checkpoint, "--out", out, "--indices", "0:12:2", *SLOW_CERTIFY])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["images"] == 6
    # another world size (one plain process) certifies the odd images rank 1 left
    assert main(["certify", checkpoint, "--out", str(out), "--indices", "0:12", *SLOW_CERTIFY]) == 0
    assert json.loads((out / "summary.json").read_text())["launch"]["images"] >= 1

    rows = read_csv_rows(out / "certify.csv")
    indices = [int(r["index"]) for r in rows]
    assert len(indices) == 12 and sorted(indices) == list(range(12))  # complete, each image once
    assert indices[:7] == sorted(indices[:7])  # merged by index; the plain process then appended
    by_index = {r["index"]: r for r in rows}
    assert all(by_index[i] == row for i, row in kept.items())  # finished rows kept, not redone
    assert main(["certify", checkpoint, "--out", str(ref), "--indices", "0:12", *SLOW_CERTIFY]) == 0
    ref_rows = {r["index"]: r for r in read_csv_rows(ref / "certify.csv")}
    assert results(rows) == results(ref_rows[r["index"]] for r in rows)


def test_two_process_training_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "train"
    args = ["train", "--preset", "digits_quick", "--epochs", "1", "--limit-train", "512",
            "--limit-test", "128", "--batch-size", "64", "--noise", "wasserstein", "--sigma", "0.02",
            "--device", "cpu", "--no-progress", "--out", out]  # fmt: skip
    done = torchrun(args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint:") == 1
    model, ckpt = load_model(str(out / "checkpoint.pt"), "cpu")  # weights_only=True
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    augment = [state["augment"] for state in ckpt["rng"]]
    assert not torch.equal(augment[0], augment[1])  # each rank its own augmentation stream

    from wbench.data import load_dataset

    train = load_dataset("digits", "train")
    x = torch.stack([train[i][0] for i in range(512)])
    y = torch.tensor([int(train[i][1]) for i in range(512)])
    torch.manual_seed(0)  # the preset's seed: the weights every rank starts from
    initial = build_model(ckpt["model_name"], **ckpt["model_kwargs"]).eval()
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(initial(x), y)
        after = torch.nn.functional.cross_entropy(model(x), y)
    assert after < before

    # one process cannot continue the two ranks' noise streams
    assert main([*map(str, args[:-1]), str(out), "--epochs", "2", "--resume"]) == 2
    done = torchrun([*args, "--epochs", "2", "--resume"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())["metrics"]] == [1, 2]


def test_a_rank_that_dies_ends_the_others_with_one_line(checkpoint, tmp_path):
    """Without torchrun's agent to stop the survivors (ranks started by hand with the env:// variables),
    rank 0 notices the lost peer in its next collective and exits with one line, not a traceback."""
    out, port = tmp_path / "run", _free_port()
    args = ["certify", checkpoint, "--out", str(out), "--indices", "0:8", *SLOW_CERTIFY]
    ranks = []
    for r in (0, 1):
        env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
               "RANK": str(r), "LOCAL_RANK": str(r)}  # fmt: skip
        cmd = [sys.executable, "-m", "wbench", *args]
        ranks.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        shard1 = out / "shards" / "certify.rank1.csv"
        while not read_csv_rows(shard1) and ranks[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ranks[1].poll() is None, "rank 1 finished before it could be killed"
        ranks[1].kill()
        _out, err = ranks[0].communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert ranks[0].returncode == 1
    assert err.strip().splitlines()[-1].startswith("wbench certify: error: rank 0 lost the other ranks:")
    assert "Traceback" not in err


def test_a_rank_whose_peers_never_come_times_out_with_one_line(checkpoint, tmp_path):
    env = {**_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2",
           "RANK": "0", "LOCAL_RANK": "0", distributed.TIMEOUT_ENV: "3"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "wbench", "certify", checkpoint, "--out", str(tmp_path / "run"), *CERTIFY],
        env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "rank 0 could not join the other ranks" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def _error_lines(text: str, needle: str) -> list[str]:
    return [
        line for line in text.splitlines() if line.startswith("wbench certify: error:") and needle in line
    ]


def test_ranks_launched_with_different_settings_all_stop(checkpoint, tmp_path):
    """Two machines' torchrun commands (static rendezvous) that differ in --seed."""
    port = _free_port()
    agents = [
        subprocess.Popen(
            _torchrun_cmd(
                [
                    "certify",
                    checkpoint,
                    "--out",
                    tmp_path / "run",
                    "--indices",
                    "0:2",
                    "--seed",
                    seed,
                    *CERTIFY,
                ],
                nproc=1,
                launcher=[
                    "--nnodes",
                    "2",
                    "--node-rank",
                    node,
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                ],
            ),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for node, seed in (("0", "0"), ("1", "1"))
    ]
    for agent in agents:
        _out, err = agent.communicate(timeout=LAUNCH_TIMEOUT_S)
        assert agent.returncode != 0
        lines = _error_lines(err, "launched with different certification settings")
        assert len(lines) == 1 and "seed" in lines[0], err[-3000:]
    assert not (tmp_path / "run" / "certify.csv").exists()


def test_output_folder_locked_by_another_run_stops_every_rank(checkpoint, tmp_path):
    out = tmp_path / "run"
    with locked_output(out):
        done = torchrun(["certify", checkpoint, "--out", out, "--indices", "0:2", *CERTIFY])
    assert done.returncode != 0
    lines = _error_lines(done.stderr, "is in use by another run")
    assert len(lines) == 2, done.stderr[-3000:]  # one line from each rank
    assert all("rank 0:" in line for line in lines)
    assert not (out / "certify.csv").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (NCCL)")
def test_two_gpus_certify_like_one(checkpoint, tmp_path):
    args = ["--n0", "20", "--num-samples", "200", "--batch", "64", "--device", "cuda", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["certify", checkpoint, "--out", str(one), "--indices", "0:6", *args]) == 0
    done = torchrun(["certify", checkpoint, "--out", two, "--indices", "0:6", *args])
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(read_csv_rows(two / "certify.csv")) == results(read_csv_rows(one / "certify.csv"))
