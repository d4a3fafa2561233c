"""Attention kernels on long gene sequences: forward+backward time and peak memory per step.

For each number of gene tokens G, a 2-layer encoder (d_model 128, 4 heads, batch 8, a ``<cls>``
token) runs forward and backward with

- ``dense``: SDPA with a broadcast key-padding mask (fused kernels where available);
- ``masked_dense``: the earlier kNN "local" attention (the reference): a dense ``(B, H, G, G)``
  additive float mask built from the gene graph, added to explicitly computed scores, softmax,
  values — every ``G × G`` tensor materialised, as the earlier implementation did;
- ``masked_sdpa``: the same mask handed to SDPA instead (fused kernels, but the mask itself is
  still ``B × H × G × G``);
- ``knn``: :class:`cellformer.nn.KnnAttention` over the same graph (``1 + 3k`` slots per gene);
- ``performer``: :class:`cellformer.nn.PerformerAttention` (FAVOR+).

Each (kernel, G) runs in its own process, so that its peak resident memory is its own; the step's
memory is the peak RSS during the timed steps minus the RSS before them. Configurations whose
estimated memory exceeds ``--max-gb`` or that ran past ``--timeout`` are reported, not run; a
kernel that failed at some G is not tried at larger G. Ratios are against ``dense`` at the same G
in the same run.

    python benchmarks/attention.py --out benchmarks/results/attention
    python benchmarks/attention.py --device cuda --out benchmarks/results/attention_gpu
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

KERNELS = ["dense", "masked_dense", "masked_sdpa", "knn", "performer"]
SIZES = [512, 1024, 2048, 4096, 8192, 16384]


def _masked_kernel(fused: bool):
    """The reference: a dense ``(batch, heads, tokens, tokens)`` additive mask from the graph."""
    import torch
    import torch.nn.functional as F

    from cellformer.nn import DenseAttention

    class MaskedDenseAttention(DenseAttention):
        def forward(self, q, k, v, padding_mask, neighbours=None):
            b, h, t, d = q.shape
            mask = torch.full((b, h, t, t), float("-inf"), device=q.device, dtype=q.dtype)
            index = neighbours.index[:, None].expand(b, h, t, -1)
            valid = neighbours.valid[:, None].expand(b, h, t, -1)
            mask.scatter_(3, index, torch.where(valid, 0.0, float("-inf")).to(q.dtype))
            mask[:, :, : neighbours.n_global] = 0.0  # <cls> attends to everything
            if fused:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            scores = q @ k.transpose(-1, -2) * d**-0.5 + mask
            return torch.softmax(scores, dim=-1) @ v

    return MaskedDenseAttention


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_one(kernel: str, n_genes: int, args) -> dict:
    """Time forward+backward of one configuration in this process."""
    import torch

    from cellformer.nn import ATTENTION, GeneGraph, TransformerEncoder

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    if kernel in ("masked_dense", "masked_sdpa"):
        ATTENTION[kernel] = _masked_kernel(fused=kernel == "masked_sdpa")
    b, d, heads, layers = args.batch, args.d_model, args.heads, args.layers
    slots = 1 + 3 * args.k
    # a random graph: the worst case for memory locality (real graphs are sparser than 3k)
    neighbours = torch.randint(0, n_genes, (n_genes, slots))
    neighbours[:, 0] = torch.arange(n_genes)
    graph = GeneGraph(n_genes, slots).set(neighbours).to(device)
    encoder = TransformerEncoder(d, heads, layers, 2 * d, dropout=0.0, attention=kernel).to(device)
    genes = torch.cat([torch.full((b, 1), -1), torch.arange(n_genes).expand(b, -1)], 1).to(device)
    padding = torch.zeros(b, n_genes + 1, dtype=torch.bool, device=device)
    x = torch.randn(b, n_genes + 1, d, device=device, requires_grad=True)

    def step():
        nb = graph.token_neighbours(genes, padding, 1) if kernel != "dense" else None
        encoder(x, padding, nb).square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_gb()
    times = []
    start = time.perf_counter()
    step()  # warm-up (also measured for memory)
    first = time.perf_counter() - start
    reps = args.reps if first < args.slow_s else 1
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    else:
        peak = _rss_gb() - base
    times.sort()
    return {
        "kernel": kernel,
        "genes": n_genes,
        "ms_per_step": 1000 * times[len(times) // 2],
        "step_memory_gb": peak,
        "slots": slots if kernel in ("knn", "masked_dense", "masked_sdpa") else None,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def estimate_gb(kernel: str, n_genes: int, args) -> float:
    """Rough memory of a step, to skip what cannot fit."""
    b, h, t = args.batch, args.heads, n_genes + 1
    linear = 40 * b * t * args.d_model * 4 * args.layers / 2**30
    if kernel == "masked_dense":  # mask, scores, probabilities and their gradients, per layer
        return linear + 4 * args.layers * b * h * t * t * 4 / 2**30
    if kernel == "masked_sdpa":  # the mask of each layer, kept for the backward pass
        return linear + args.layers * b * h * t * t * 4 / 2**30
    return linear  # dense: fused SDPA kernels keep no T×T tensor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", default=KERNELS, choices=KERNELS)
    parser.add_argument("--genes", nargs="+", type=int, default=SIZES)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--k", type=int, default=8, help="graph k (slots = 1 + 3k)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--slow-s", type=float, default=20.0, help="one timed step beyond this")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-gb", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument("--out", default="benchmarks/results/attention")
    parser.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args)))
        return

    import pandas as pd

    rows, failed = [], set()
    for n_genes in args.genes:
        for kernel in args.kernels:
            row = {"kernel": kernel, "genes": n_genes}
            estimate = estimate_gb(kernel, n_genes, args)
            if kernel in failed:
                row["status"] = "skipped (failed at a smaller G)"
            elif estimate > args.max_gb:
                row["status"] = f"skipped (needs ~{estimate:.0f} GB)"
            else:
                cmd = [sys.executable, __file__, *sys.argv[1:], "--one", kernel, str(n_genes)]
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                    if done.returncode == 0:
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                        row["status"] = "ok"
                    else:
                        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
                        row["status"] = f"failed: {lines[-1][:80]}"
                except subprocess.TimeoutExpired:
                    row["status"] = f"timeout > {args.timeout:.0f} s"
                if row["status"] != "ok":
                    failed.add(kernel)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    dense = table[table.kernel == "dense"].set_index("genes")
    for column, ratio in (("ms_per_step", "time_vs_dense"), ("step_memory_gb", "mem_vs_dense")):
        if column in table and len(dense):
            table[ratio] = table[column] / table.genes.map(dense[column])
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    growth = {}
    for kernel, group in table[table.status == "ok"].groupby("kernel"):
        mem = group.set_index("genes")["step_memory_gb"]
        if 4096 in mem and 16384 in mem:
            growth[kernel] = float(mem[16384] / mem[4096])
    if growth:
        print("memory growth mem(16384) / mem(4096):", {k: round(v, 2) for k, v in growth.items()})
    at_4096 = table[(table.genes == 4096) & (table.status == "ok")].set_index("kernel")
    if {"knn", "masked_dense"} <= set(at_4096.index):
        speed = at_4096.ms_per_step["masked_dense"] / at_4096.ms_per_step["knn"]
        smaller = at_4096.step_memory_gb["masked_dense"] / at_4096.step_memory_gb["knn"]
        print(f"G=4096: knn is {speed:.1f}x faster and {smaller:.1f}x smaller than masked_dense")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args), "results": rows, "memory_growth_16384_over_4096": growth}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
