"""The `sae` command line.

Each subcommand validates everything it was given (config, overrides, paths) before any work
starts, so bad input stops the run with one line naming the problem and leaves no output.
Errors the user can act on are printed as `sae: error: ...` without a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sae.errors import UserError

Handler = Callable[[argparse.Namespace], int | None]


def _config_args(parser: argparse.ArgumentParser, out: bool = True) -> None:
    parser.add_argument("config", type=Path, help="YAML config file")
    if out:
        parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. train.lr=1e-4); repeatable",
    )


def _check_out_dir(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {path}: directory {parent} is not writable")


# ---------------------------------------------------------------------------- commands


# Configs are validated before the heavy imports (torch, sae_lens) so bad input fails fast.


def _toy(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    _check_out_dir(args.out)
    from pipelines.toy import run_toy

    run_toy(cfg, args.out)


def _bench_toy(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    from pipelines.compare_saelens import run_compare

    run_compare(cfg, out_json=args.json)


def _shapes(text: str) -> list[tuple[int, int, int]]:
    """`DxMxB,...` -> [(d, m, batch), ...]"""
    try:
        shapes = [tuple(int(n) for n in part.split("x")) for part in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 3 or min(s) < 1 for s in shapes):
        raise UserError(f"--points expects DxMxB[,DxMxB...] with positive sizes, got '{text}'")
    return shapes  # type: ignore[return-value]


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise UserError(f"{flag} expects names from {', '.join(allowed)}, got '{text}'")
    return names


def _bench_train(args: argparse.Namespace) -> None:
    points = _shapes(args.points)
    archs = _names(args.archs, ("topk", "relu"), "--archs")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be at least 1 and --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench_train import run_bench_train

    run_bench_train(
        points, archs, args.warmup, args.steps, args.device, args.precision, args.json, args.threads
    )


def _bench_multi(args: argparse.Namespace) -> None:
    ((d, m, batch),) = _shapes(args.point)
    if not 1 <= args.saes <= 8 or args.steps < 1:
        raise UserError("--saes must be 1 to 8 and --steps at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench_multi import run_bench_multi

    run_bench_multi(args.saes, args.steps, d, m, batch, args.json)


def _check_out_file(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise UserError(f"--json {path} is a directory")
    if not path.parent.exists():
        raise UserError(f"--json {path}: directory {path.parent} does not exist")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="train and evaluate an SAE on ground-truth toy data")
    _config_args(toy)
    toy.set_defaults(handler=_toy)

    bench = sub.add_parser("bench", help="benchmarks that print side-by-side figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_toy = bench_sub.add_parser("toy", help="ours vs SAELens's trainer, same data and time")
    _config_args(bench_toy, out=False)
    bench_toy.add_argument("--json", type=Path, default=None, help="also write the rows here")
    bench_toy.set_defaults(handler=_bench_toy)

    train = bench_sub.add_parser(
        "train", help="training samples/s: ours vs SAELens's SAETrainer vs a dense-matmul bound"
    )
    train.add_argument("--json", type=Path, default=None, help="write rows as JSON here")
    train.add_argument(
        "--points", default="128x1024x4096,512x8192x4096", help="shapes DxMxB, comma-separated"
    )
    train.add_argument("--archs", default="topk,relu", help="topk and/or relu, comma-separated")
    train.add_argument("--warmup", type=int, default=2, help="untimed steps first, each side")
    train.add_argument("--steps", type=int, default=5, help="timed steps, each side")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    train.add_argument(
        "--threads", type=int, default=None, help="CPU threads for both sides (default: torch's)"
    )
    train.set_defaults(handler=_bench_train)

    multi = bench_sub.add_parser(
        "multi", help="N SAEs on shared batches vs N separate runs, wall-clock"
    )
    multi.add_argument("--json", type=Path, default=None, help="write the row as JSON here")
    multi.add_argument("--saes", type=int, default=4, help="how many SAEs (a sweep over k)")
    multi.add_argument("--steps", type=int, default=25, help="training steps of each run")
    multi.add_argument("--point", default="128x1024x4096", help="shape DxMxB")
    multi.set_defaults(handler=_bench_multi)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"sae: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sae: interrupted", file=sys.stderr)
        return 130
