"""`copd-lab`: list the methods, run a comparison in the simulator (`sim`) or the configured world (`run`,
default the VLM world), write metrics and a results table; `--resume` continues from the checkpoints."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from copd_lab.algorithm.recipes import METHODS
from copd_lab.config import ConfigError
from copd_lab.config_io import RUN_DEFAULTS, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="copd-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="list the methods a config can name")
    for name, text in (("sim", "run CoPD and the baselines in the simulator world"),
                       ("run", "run CoPD and the baselines in the config's world (default: vlm, see [vlm])")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--config", help="TOML config (see configs/)")
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field, e.g. --set copd.rl_steps=3 (repeatable)")
        cmd.add_argument("--seeds", type=int, help="number of seeds (results report mean ± std)")
        cmd.add_argument("--out", required=True,
                         help="output folder for metrics.parquet, results.md/csv, config and checkpoints/")
        cmd.add_argument("--resume", action="store_true",
                         help="continue from <out>/checkpoints: skip finished seeds, resume interrupted ones")
        cmd.add_argument("--overwrite", action="store_true",
                         help="replace the run in --out (its results, config and checkpoints; nothing else)")
        cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "methods":
        width = max(len(m) for m in METHODS)
        for name, text in METHODS.items():
            print(f"{name:<{width}}  {text}")
        return 0
    from copd_lab.algorithm.recipes import build_recipes
    from copd_lab.experiment import run_comparison
    from copd_lab.world import NonFiniteError, WorldLost

    try:
        overrides = list(args.set) + ([f"seeds={args.seeds}"] if args.seeds is not None else [])
        cfg = load_config(args.config, overrides, defaults=RUN_DEFAULTS if args.command == "run" else None)
        cfg = replace(cfg, world="sim") if args.command == "sim" and cfg.world != "sim" else cfg
        build_recipes(cfg)  # every method is checked before any work
        start = time.perf_counter()
        comparison = run_comparison(cfg, run=args.out, progress=not args.quiet, out=args.out, resume=args.resume,
                                    overwrite=args.overwrite)
    except ConfigError as err:
        print(f"copd-lab: error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteError, WorldLost) as err:
        print(f"copd-lab: error: {err}", file=sys.stderr)
        return 1
    out = comparison.save(args.out)
    print(comparison.table())
    print(f"{cfg.seeds} seed(s) in {time.perf_counter() - start:.1f} s; wrote {out}/metrics.parquet, "
          f"results.md, results.csv, config.toml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
