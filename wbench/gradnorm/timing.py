"""Timing of the Wasserstein gradient norm and of the penalty training step (interleaved ratios).

Run ``python -m wbench.gradnorm.timing [--device cpu] [--rounds 7] [--step-rounds 25] [--threads N]``.
Prints

* for 28x28x1 and 32x32x3 images, radius 2 and 4, batch 64: the median time of the ``conv``,
  ``edges`` and ``dense`` implementations and the medians of the per-round ratios
  dense/conv and edges/conv (the three are called one after another in every round, so they
  share the machine's load);
* for the MNIST net of DESIGN.md (Wong et al.; defined inline here) at batch 128: the median
  per-pair ratio of a Wasserstein-penalty SGD step to a Euclidean-penalty step (radius 2,
  eta 0.1), alternating which of the two runs first.

Nothing here is gated; the CI gate lives in ``bench/speed_gate.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from wbench.devices import resolve_device, synchronize
from wbench.gradnorm import wasserstein_grad_norm_sq
from wbench.penalties import gradient_penalty_loss


def mnist_net() -> nn.Module:
    """Wong et al.'s MNIST net, as in DESIGN.md."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _timed(fn, device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_implementations(device, rounds: int) -> list[dict]:
    rows = []
    for c, h, w in ((1, 28, 28), (3, 32, 32)):
        for radius in (2, 4):
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.rand(64, c, h, w, generator=gen, device=device)
            grad = torch.randn(64, c, h, w, generator=gen, device=device)
            impls = ("conv", "edges", "dense")
            times = {k: [] for k in impls}
            for k in impls:  # warm-up (builds and caches the graph tables)
                wasserstein_grad_norm_sq(x, grad, radius, k)
            for _ in range(rounds):
                for k in impls:
                    times[k].append(
                        _timed(
                            lambda k=k, x=x, g=grad, r=radius: wasserstein_grad_norm_sq(x, g, r, k), device
                        )
                    )
            rows.append(
                {
                    "shape": f"64x{c}x{h}x{w}",
                    "radius": radius,
                    **{f"{k}_ms": 1e3 * statistics.median(v) for k, v in times.items()},
                    "dense/conv": statistics.median(
                        d / cv for d, cv in zip(times["dense"], times["conv"], strict=True)
                    ),
                    "edges/conv": statistics.median(
                        e / cv for e, cv in zip(times["edges"], times["conv"], strict=True)
                    ),
                }
            )
    return rows


def time_penalty_steps(device, rounds: int, batch: int = 128) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    steps = {}
    for metric in ("euclidean", "wasserstein"):
        torch.manual_seed(0)
        net = mnist_net().to(device)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def step(net=net, opt=opt, metric=metric) -> None:
            opt.zero_grad(set_to_none=True)
            total, _, _ = gradient_penalty_loss(net, x, y, 0.1, metric, radius=2)
            total.backward()
            opt.step()

        steps[metric] = step
    for _ in range(3):
        for s in steps.values():
            s()
    ratios, te, tw = [], [], []
    for i in range(rounds):
        order = ("euclidean", "wasserstein") if i % 2 == 0 else ("wasserstein", "euclidean")
        t = {m: _timed(steps[m], device) for m in order}
        ratios.append(t["wasserstein"] / t["euclidean"])
        te.append(t["euclidean"])
        tw.append(t["wasserstein"])
    return {
        "euclidean_ms": 1e3 * statistics.median(te),
        "wasserstein_ms": 1e3 * statistics.median(tw),
        "ratio": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--step-rounds", type=int, default=25)
    parser.add_argument("--skip-impls", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_impls:
        print(
            f"{'shape':<12} {'r':>2} {'conv ms':>9} {'edges ms':>9} {'dense ms':>9} "
            f"{'dense/conv':>10} {'edges/conv':>10}"
        )
        for r in time_implementations(device, args.rounds):
            print(
                f"{r['shape']:<12} {r['radius']:>2} {r['conv_ms']:>9.3f} {r['edges_ms']:>9.3f} "
                f"{r['dense_ms']:>9.1f} {r['dense/conv']:>10.1f} {r['edges/conv']:>10.2f}"
            )
    s = time_penalty_steps(device, args.step_rounds)
    print(
        f"penalty step, MNIST net B=128: euclidean {s['euclidean_ms']:.1f} ms, "
        f"wasserstein {s['wasserstein_ms']:.1f} ms, median ratio W/E {s['ratio']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
