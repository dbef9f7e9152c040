"""A model of a CoPD tick on a GPU cluster: where the time goes per expert, the traffic per OPD edge.

    python benchmarks/scaling_model.py                       # K = 3, 10, 30 experts of a 4B VLM, 8-GPU nodes
    python benchmarks/scaling_model.py --decode-tps 12000    # your own measured throughputs

Not a measurement: arithmetic on the throughputs given (defaults: H100-class figures, stated in
docs/scaling.md) and on the bytes per token copd_lab's sharded world moves, which benchmarks/ray_overhead.py
measures (token ids and sampled log-probs 4 bytes each per token after the cast a real engine would make; top-k
distributions 6 bytes per entry). One OPD-phase tick of one expert is: rollouts of its GRPO batch and of one OPD
batch per teacher it learns from, teacher scoring (a prefill) of one batch per student it teaches, one update
over all its batches, and the transfers of its edges. The critical path is the busiest expert's tick.
"""

from __future__ import annotations

import argparse


def edges(k: int, topology: str) -> list[tuple[int, int]]:
    """(teachers an expert learns from, students it teaches) of each expert."""
    if topology == "all_pairs":
        return [(k - 1, k - 1)] * k
    if topology == "hub":  # expert 0 is the hub: every spoke learns from it and teaches it
        return [(k - 1, k - 1)] + [(1, 1)] * (k - 1)
    if topology == "ring":
        return [(1, 1)] * k
    raise ValueError(topology)


def tick(args, k: int, topology: str, gpus: int) -> dict:
    n = args.prompts * args.group  # rollouts per batch
    seq = args.prompt_tokens + args.completion_tokens
    decode = n * args.completion_tokens / (args.decode_tps * gpus)
    prefill = n * seq / (args.prefill_tps * gpus)
    train = n * seq / (args.train_tps * gpus)
    per_token = 4 + (4 if args.estimator == "sampled" else 6 * args.topk)  # ids out, scores back
    edge_mb = n * args.completion_tokens * per_token / 2**20 + n * args.prompt_bytes / 2**20
    rows = []
    for learns, teaches in edges(k, topology):
        transfer = (learns + teaches) * edge_mb / (args.link_gbs * 1024)
        rows.append({"rollout": (1 + learns) * decode, "scoring": teaches * prefill, "update": (1 + learns) * train,
                     "transfer": transfer})
    busiest = max(rows, key=lambda r: sum(r.values()))
    return {**busiest, "edge_mb": edge_mb, "edges": sum(learns for learns, _ in edges(k, topology)),
            "total": sum(busiest.values()), "spread": sum(busiest.values()) / min(sum(r.values()) for r in rows)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", type=float, default=4e9, help="model parameters (4B VLM)")
    p.add_argument("--prompts", type=int, default=64, help="prompts per batch")
    p.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--prompt-tokens", type=int, default=1024, help="prompt tokens, vision tokens included")
    p.add_argument("--completion-tokens", type=int, default=1024)
    p.add_argument("--prompt-bytes", type=int, default=64, help="bytes naming a prompt (its row, not its pixels)")
    p.add_argument("--decode-tps", type=float, default=20_000, help="vLLM decode tokens/s per GPU, large batch")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation of prefill and training")
    p.add_argument("--peak-tflops", type=float, default=989, help="bf16 dense TFLOP/s per GPU (H100 SXM)")
    p.add_argument("--link-gbs", type=float, default=2.0, help="GB/s of one Ray object transfer between nodes")
    p.add_argument("--estimator", default="sampled", choices=["sampled", "topk"])
    p.add_argument("--topk", type=int, default=10)
    args = p.parse_args()
    flops = args.peak_tflops * 1e12 * args.mfu
    args.prefill_tps = flops / (2 * args.params)  # a forward: 2 FLOPs per parameter per token
    args.train_tps = flops / (6 * args.params)  # forward and backward
    print(f"per GPU: decode {args.decode_tps:,.0f} tok/s (given), prefill {args.prefill_tps:,.0f} tok/s, "
          f"train {args.train_tps:,.0f} tok/s ({args.mfu:.0%} of {args.peak_tflops:g} TFLOP/s); "
          f"{args.prompts}x{args.group} rollouts of {args.prompt_tokens}+{args.completion_tokens} tokens per batch")
    print()
    print("| K | topology | GPUs per expert | nodes (8 GPUs) | OPD edges | busiest expert s/tick: rollout, "
          "scoring, update, transfer | total s | busiest / idlest | MB per edge per tick |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, gpus in ((3, 8), (10, 4), (30, 2)):
        for topology in ("hub", "all_pairs", "ring"):
            t = tick(args, k, topology, gpus)
            print(f"| {k} | {topology} | {gpus} | {-(-k * gpus // 8)} | {t['edges']} | {t['rollout']:.1f}, "
                  f"{t['scoring']:.1f}, {t['update']:.1f}, {t['transfer']:.2f} | {t['total']:.1f} | "
                  f"{t['spread']:.1f}x | {t['edge_mb']:.1f} |")


if __name__ == "__main__":
    main()
