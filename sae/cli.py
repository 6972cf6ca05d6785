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


def _report(args: argparse.Namespace) -> None:
    from sae.report import build_report

    path = build_report(args.run_dir)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    toy = sub.add_parser("toy", help="train and evaluate an SAE on ground-truth toy data")
    _config_args(toy)
    toy.set_defaults(handler=_toy)

    report = sub.add_parser("report", help="(re)build DIR/report.html from a finished run")
    report.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory")
    report.set_defaults(handler=_report)

    bench = sub.add_parser("bench", help="benchmarks that print side-by-side figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_toy = bench_sub.add_parser("toy", help="ours vs SAELens's trainer, same data and time")
    _config_args(bench_toy, out=False)
    bench_toy.add_argument("--json", type=Path, default=None, help="also write the rows here")
    bench_toy.set_defaults(handler=_bench_toy)
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
