"""Scale-out of certification: ``wbench certify`` on 1 process vs N processes under torchrun.

Each call launches the real command line in a fresh output folder with ``OMP_NUM_THREADS=1`` (one
thread per process): one plain process as the baseline, torchrun with N processes otherwise (gloo
on the CPU, one GPU per process with CUDA). Every process certifies the same number of digits
images (``IMAGES_PER_PROCESS``, n0 = 100, n = 5000), and the figure is the throughput the run
records in ``summary.json["launch"]``: noise samples of all ranks per second of rank 0's wall
clock from the synchronised start to the last round, so start-up (imports, rendezvous) is left out
and the per-image synchronisation is counted. Scaling efficiency = throughput(N) / (N x
throughput(1)); 1.0 is perfect. On a shared machine the ratio also measures the contention.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench import _common as common

IMAGES_PER_PROCESS = 4
CERTIFY_ARGS = ("--n0", "100", "--num-samples", "5000", "--batch", "1000", "--no-progress")
_REPO = Path(__file__).resolve().parents[1]


class _LaunchFixture:
    tmp: Path | None = None  # asv calls teardown after a setup that skipped

    def _build(self, processes: int, device: str) -> None:
        from wbench.models import build_model
        from wbench.runio import atomic_torch_save

        common.require_device(device)
        available = torch.cuda.device_count() if device == "cuda" else os.cpu_count() or 1
        if processes > available:
            raise NotImplementedError(f"{processes} processes need {processes} {device} devices/cores")
        self.device = device
        self.tmp = Path(tempfile.mkdtemp(prefix="wbench-scaleout-"))
        torch.manual_seed(0)
        kwargs = {"num_classes": 10, "width": 8}
        model = build_model("digits_cnn", **kwargs)
        self.checkpoint = self.tmp / "checkpoint.pt"
        config = {"dataset": "digits", "noise": "wasserstein", "sigma": 0.02}
        atomic_torch_save(
            {"model_name": "digits_cnn", "model_kwargs": kwargs, "state_dict": model.state_dict(),
             "config": config, "seed": 0, "environment": {}},
            self.checkpoint,
        )  # fmt: skip
        self.runs = 0

    def teardown(self, *_params) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _samples_per_s(self, processes: int) -> float:
        """Launch one certification in a fresh folder; its recorded noise samples/s over all ranks."""
        self.runs += 1
        out = self.tmp / f"run{self.runs}"
        args = ["certify", str(self.checkpoint), "--out", str(out), "--device", self.device,
                "--max-images", str(IMAGES_PER_PROCESS * processes), *CERTIFY_ARGS]  # fmt: skip
        if processes == 1:
            cmd = [sys.executable, "-m", "wbench", *args]
        else:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-port", str(port), "-m", "wbench", *args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        path = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=path)
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
        launch = json.loads((out / "summary.json").read_text())["launch"]
        if (launch["world_size"], launch["images"]) != (processes, IMAGES_PER_PROCESS * processes):
            raise RuntimeError(f"the launch certified {launch}, not {IMAGES_PER_PROCESS} images per process")
        return float(launch["noise_samples_per_s"])


class CertifyScaleOutSuite(_LaunchFixture):
    """Noise samples per second of a whole ``wbench certify`` launch, by number of processes."""

    params = (common.grid([1, 2], [1, 2, 4, 8]), list(common.DEVICES))
    param_names = ("processes", "device")
    unit = "noise samples/s"
    rounds = 1  # one launch per case: the launch itself is the sample
    timeout = 180
    number = 1
    repeat = 1

    def setup(self, processes, device):
        self._build(processes, device)

    def track_noise_samples_per_s(self, processes, device):
        return self._samples_per_s(processes)


class CertifyScalingEfficiencySuite(_LaunchFixture):
    """Throughput of N processes / (N x throughput of one), launches alternated; 1.0 = perfect."""

    params = (common.grid([2], [2, 4, 8]), list(common.DEVICES))
    param_names = ("processes", "device")
    unit = "ratio"
    rounds = 1
    timeout = 180  # four launches of about 15 s each on a quiet 2-core machine
    rounds_per_call = 2

    def setup(self, processes, device):
        self._build(processes, device)

    def track_scaling_efficiency(self, processes, device):
        ratios = []
        for _ in range(self.rounds_per_call):
            one = self._samples_per_s(1)
            ratios.append(self._samples_per_s(processes) / (processes * one))
        return statistics.median(ratios)
