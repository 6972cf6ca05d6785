"""The `sae` command line.

Each subcommand validates everything it was given (config, overrides, paths) before any work
starts, so bad input stops the run with one line naming the problem and leaves no output.
Errors the user can act on are printed as `sae: error: ...` without a traceback (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sae import threads
from sae.errors import UserError

threads.configure()  # before torch loads its OpenMP runtime

Handler = Callable[[argparse.Namespace], int | None]


def _config_args(
    parser: argparse.ArgumentParser, out: bool = True, reads: str | None = None
) -> None:
    if reads:
        parser.description = (
            f"{parser.description or ''}\n\nReads the config sections: {reads}. Every key: "
            "`sae config reference` (configs/reference.md)."
        ).strip()
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


def _check_run_dir(path: Path) -> None:
    from sae.output_dir import check_run_dir

    check_run_dir(path)


def _check_out_dir(path: Path, flag: str = "--out") -> None:
    from sae.output_dir import check_writable_dir

    check_writable_dir(path, flag)


@contextmanager
def _torchrun_group(device: str) -> Iterator[None]:
    """Under torchrun, the command runs as one rank of a torch.distributed process group."""
    from sae import distributed

    distributed.init(device)
    try:
        yield
    finally:
        distributed.shutdown()


# ---------------------------------------------------------------------------- commands

# the config sections each config-reading command uses
READS = {
    "toy": "data (data.toy or data.synthetic), sae or saes, train, eval, logging, seed",
    "harvest": "data (any source), harvest, seed",
    "train": "data (data.store, data.lm, data.toy or data.synthetic), sae or saes, train, eval, "
    "logging, seed",
    "run": "data (data.lm, data.toy or data.synthetic), harvest, sae or saes, train, eval, "
    "logging, seed",
}


# Configs are validated before the heavy imports (torch, sae_lens) so bad input fails fast.


def _toy(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    _check_run_dir(args.out)
    from pipelines.toy import run_toy

    run_toy(cfg, args.out)


def _harvest(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    _check_out_dir(args.out)
    from pipelines.harvest import check_harvest, run_harvest

    check_harvest(cfg, args.out)
    with _torchrun_group(cfg.data.lm.device if cfg.data.lm else "cpu"):
        run_harvest(cfg, args.out)


def _train(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    _check_run_dir(args.out)
    if cfg.data.store is not None:
        from sae.store.format import load_manifest

        load_manifest(cfg.data.store)
    from pipelines.train import run_train

    with _torchrun_group(cfg.train.device):
        run_train(cfg, args.out)


def _full_pipeline(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    _check_run_dir(args.out)
    from pipelines.run import run_pipeline

    run_pipeline(cfg, args.out)


def _publish(args: argparse.Namespace) -> None:
    if args.to.startswith("hf://"):
        from sae.publish.hub import hub_token

        hub_token(args.to.removeprefix("hf://"))  # no credentials: say so before any work
    else:
        _check_out_dir(Path(args.to), "--to")
    from sae.publish.release import publish_run

    for where in publish_run(args.run_dir, args.to):
        print(f"published {where}")


def _store_verify(args: argparse.Namespace) -> int:
    from sae.store.verify import incomplete, verify_store

    manifest, bad = verify_store(args.store)
    for shard in bad:
        print(f"bad shard {args.store / shard.file}: {shard.reason}")
    if bad:
        print(f"{len(bad)} of {len(manifest.shards)} shards are bad", file=sys.stderr)
        return 1
    if missing := incomplete(manifest):  # intact, but not a store training can use yet
        print(f"{len(manifest.shards)} shards, {manifest.rows} rows intact; {missing}")
        return 1
    print(f"ok: {len(manifest.shards)} shards, {manifest.rows} rows verified")
    return 0


def _store_info(args: argparse.Namespace) -> None:
    from sae.store.format import load_manifest
    from sae.store.verify import describe_store

    print(describe_store(args.store, load_manifest(args.store)))


def _store_export(args: argparse.Namespace) -> None:
    from sae.store.format import load_manifest

    load_manifest(args.store)
    _check_out_dir(args.to_saelens, "--to-saelens")
    from sae.store.saelens_cache import export_saelens

    export_saelens(args.store, args.to_saelens, hooks=args.hook, context_size=args.context_size)


def _store_import(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    from sae.store.saelens_cache import import_saelens

    import_saelens(args.path, args.out, shard_rows=args.shard_rows, dtype=args.dtype)


def _bench_store(args: argparse.Namespace) -> None:
    from sae.store.format import load_manifest

    load_manifest(args.store)
    from pipelines.bench.store import run_bench_store

    run_bench_store(args.store, args.batch_size, args.hook, args.repeats)


def _bench_toy(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    lrs = _learning_rates(args.lrs)
    from pipelines.bench.toy import run_compare

    run_compare(cfg, out_json=args.json, lrs=lrs)


def _learning_rates(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(part) for part in text.split(",") if part)
    except ValueError:
        lrs = ()
    if not lrs or any(not lr > 0 for lr in lrs):
        raise UserError(f"--lrs expects positive learning rates, comma-separated, got '{text}'")
    return lrs


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
    from pipelines.bench.train import run_bench_train

    run_bench_train(
        points, archs, args.warmup, args.steps, args.device, args.precision, args.json, args.threads
    )


def _bench_suite(args: argparse.Namespace) -> None:
    from sae.models.registry import architecture_names

    archs = _names(args.archs, tuple(architecture_names()), "--archs")
    trainers = _names(args.trainers, ("ours", "saelens", "oracle"), "--trainers")
    for out in (args.json, args.curves):
        if out is not None:
            _check_out_file(out)
    from pipelines.bench.suite import run_suite

    cases = [name for name in (args.cases or "").split(",") if name] or None
    run_suite(archs, args.quick, trainers, cases, args.overrides, args.json, args.curves)


def _bench_synth(args: argparse.Namespace) -> None:
    if args.rows < 1 or args.batch < 1 or args.repeats < 1:
        raise UserError("--rows, --batch and --repeats must be at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench.synth import DEFAULT_CONFIG, run_bench_synth
    from sae.config import load_config

    cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    run_bench_synth(cfg, args.rows, args.batch, args.repeats, args.json)


def _bench_multi(args: argparse.Namespace) -> None:
    ((d, m, batch),) = _shapes(args.point)
    if not 1 <= args.saes <= 8 or args.steps < 1:
        raise UserError("--saes must be 1 to 8 and --steps at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench.multi import run_bench_multi

    run_bench_multi(args.saes, args.steps, d, m, batch, args.json)


def _bench_harvest(args: argparse.Namespace) -> None:
    sizes = (args.layers, args.d_model, args.context_size, args.batch_sequences, args.tokens)
    if min(sizes) < 1 or args.shard_tokens < 1 or args.repeats < 1:
        raise UserError("--layers, --d-model, --context-size, --batch-sequences, --tokens, "
                        "--shard-tokens and --repeats must be positive")
    if args.context_size < 2 or args.context_size > 1024:
        raise UserError("--context-size must be 2 to 1024")
    if args.threads is not None and args.threads < 1:
        raise UserError("--threads must be at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench.harvest import Shape, run_bench_harvest

    shape = Shape(
        args.layers, args.d_model, args.context_size, args.batch_sequences, args.tokens,
        args.shard_tokens, args.hook,
    )  # fmt: skip
    if shape.hook_name not in _tl_hook_names(shape.layers):
        raise UserError(f"--hook '{shape.hook_name}' is not a per-token hook of a "
                        f"{shape.layers}-layer model (e.g. blocks.0.hook_resid_post)")
    run_bench_harvest(shape, args.repeats, args.json, args.threads)


def _tl_hook_names(layers: int) -> set[str]:
    per_block = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out",
                 "hook_mlp_out", "attn.hook_z", "mlp.hook_post")
    return {f"blocks.{i}.{name}" for i in range(layers) for name in per_block}


def _check_out_file(path: Path) -> None:
    if path.exists() and path.is_dir():
        raise UserError(f"--json {path} is a directory")
    if not path.parent.exists():
        raise UserError(f"--json {path}: directory {path.parent} does not exist")

def _config_show(args: argparse.Namespace) -> None:
    from sae.config import load_config
    from sae.config_reference import show

    print(show(load_config(args.config, args.overrides)), end="")


def _config_reference(args: argparse.Namespace) -> None:
    from sae.config_reference import reference_markdown

    print(reference_markdown(), end="")


def _eval(args: argparse.Namespace) -> None:
    from sae.config import load_config

    cfg = load_config(args.config, args.overrides)
    from pipelines.eval import default_out_dir, run_eval

    out = args.out or default_out_dir(args.sae)
    _check_out_dir(out)
    run_eval(args.sae, cfg, out)


def _lab_superposition(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    from sae.lab.superposition import run_lab

    run_lab(args.out, quick=args.quick)


def _report(args: argparse.Namespace) -> None:
    from sae.report import build_report

    path = build_report(args.run_dir)
    print(f"wrote {path}")


def _serve(args: argparse.Namespace) -> None:
    from sae.service.server import serve

    slurm = dict(item.partition("=")[::2] for item in args.slurm)
    serve(args.state, args.host, args.port, args.workers, args.token, args.executor, slurm)


def _submit(args: argparse.Namespace) -> int:
    from sae.service.client import run_submit

    return run_submit(args.config, args.server, args.kind, args.nproc, args.watch, args.token)


def _bench_serve(args: argparse.Namespace) -> None:
    if args.repeats < 0 or args.jobs < 1 or args.requests < 1:
        raise UserError("--repeats must be at least 0, --jobs and --requests at least 1")
    if args.config is not None:
        from sae.config import load_config

        load_config(args.config)
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench.serve import run_bench_serve

    run_bench_serve(args.config, args.repeats, args.jobs, args.requests, args.json)


def _bench_startup(args: argparse.Namespace) -> None:
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.json is not None:
        _check_out_file(args.json)
    from pipelines.bench.startup import run_bench_startup

    run_bench_startup(args.repeats, args.json)


def _service_parsers(sub: argparse._SubParsersAction) -> None:
    """`sae serve` and `sae submit` (sae/service/)."""
    serve = sub.add_parser("serve", help="job queue + HTTP API + web UI over these commands")
    serve.add_argument("--state", type=Path, default=Path("sae-state"), help="state directory")
    serve.add_argument("--host", default="127.0.0.1", help="other than loopback needs --token")
    serve.add_argument("--port", type=int, default=8000, help="0: any free port")
    serve.add_argument("--workers", type=int, default=1, help="jobs run at once")
    serve.add_argument("--token", default=None, help="required on every request (or SAE_SERVE_TOKEN)")
    serve.add_argument(
        "--executor",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="where jobs run: child processes here, Slurm through submitit, or submitit's "
        "local executor",
    )
    serve.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="submitit parameter for --executor slurm, e.g. slurm_partition=gpu")
    serve.set_defaults(handler=_serve)
    submit = sub.add_parser("submit", help="send a config to a running sae serve")
    submit.add_argument("config", type=Path, help="YAML config file (lists make a sweep)")
    submit.add_argument("--server", default=None, help="URL (default $SAE_SERVER or :8000)")
    submit.add_argument(
        "--kind",
        choices=("run", "toy", "train", "harvest"),
        default="run",
        help="which pipeline runs the config (the sae command of that name)",
    )
    submit.add_argument("--nproc", type=int, default=1, help="ranks under torchrun")
    submit.add_argument("--token", default=None, help="the server's token (or SAE_SERVE_TOKEN)")
    submit.add_argument("--watch", action="store_true", help="print progress until the end")
    submit.set_defaults(handler=_submit)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (where it has one worth showing); descriptions
    keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default not in (None, [], False, argparse.SUPPRESS)
        if shown and not action.required and "%(default)" not in text and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from sae import __version__

    parser = argparse.ArgumentParser(
        prog="sae", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_subparser_class())

    toy = sub.add_parser("toy", help="train and evaluate an SAE on ground-truth toy data")
    _config_args(toy, reads=READS["toy"])
    toy.set_defaults(handler=_toy)

    harvest = sub.add_parser("harvest", help="write a source's activations to a sharded store")
    _config_args(harvest, reads=READS["harvest"])
    harvest.set_defaults(handler=_harvest)

    train = sub.add_parser(
        "train", help="train an SAE on a store (data.store), a live model (data.lm) or a toy source"
    )
    _config_args(train, reads=READS["train"])
    train.set_defaults(handler=_train)

    run = sub.add_parser(
        "run", help="harvest -> store -> train -> evaluate -> report -> publish; re-run to resume"
    )
    _config_args(run, reads=READS["run"])
    run.set_defaults(handler=_full_pipeline)

    publish = sub.add_parser(
        "publish", help="a run's SAEs as SAELens folders with model cards, locally or on the hub"
    )
    publish.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory")
    publish.add_argument(
        "--to", required=True, metavar="PATH", help="a local directory, or hf://user/repository"
    )
    publish.set_defaults(handler=_publish)

    store = sub.add_parser("store", help="inspect, verify, export and import activation stores")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    verify = store_sub.add_parser(
        "verify", help="re-hash every shard, check it against the manifest; exit 1 if any is "
        "bad or the store is incomplete"
    )
    verify.add_argument("store", type=Path, help="store directory")
    verify.set_defaults(handler=_store_verify)
    info = store_sub.add_parser("info", help="rows, size, dtype, hooks and shards of a store")
    info.add_argument("store", type=Path, help="store directory")
    info.set_defaults(handler=_store_info)
    export = store_sub.add_parser("export", help="write SAELens's cached-activations format")
    export.add_argument("store", type=Path, help="store directory")
    export.add_argument(
        "--to-saelens", type=Path, required=True, metavar="PATH", help="folder to write"
    )
    export.add_argument("--hook", action="append", default=None, help="hook(s) to export (all)")
    export.add_argument("--context-size", type=int, default=None, help="rows per sequence")
    export.set_defaults(handler=_store_export)
    imp = store_sub.add_parser("import", help="read SAELens's cached-activations format")
    imp.add_argument("path", type=Path, help="SAELens cached activations (datasets folder)")
    imp.add_argument("--out", type=Path, required=True, help="store directory to write")
    imp.add_argument("--shard-rows", type=int, default=65_536, help="rows per shard file")
    imp.add_argument(
        "--dtype", choices=["fp32", "bf16", "fp16"], default=None, help="stored dtype (default: as read)"
    )
    imp.set_defaults(handler=_store_import)

    config = sub.add_parser(
        "config",
        help="show a resolved config, or the reference of every config key",
        description="Every config key, its default and what it does: `sae config reference` "
        "(also in configs/reference.md).",
    )
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="the config with every default filled in, as YAML")
    _config_args(show, out=False)
    show.set_defaults(handler=_config_show)
    reference = config_sub.add_parser(
        "reference", help="every config key with type, default and description (Markdown)"
    )
    reference.set_defaults(handler=_config_reference)

    evaluate = sub.add_parser(
        "eval",
        help="evaluate any SAELens-format SAE (folder or RELEASE:SAE_ID) on a config's source",
    )
    evaluate.add_argument(
        "sae", metavar="SAE", help="a SAELens folder, or a SAELens pretrained RELEASE:SAE_ID"
    )
    evaluate.add_argument("--config", type=Path, required=True, help="YAML config file")
    evaluate.add_argument(
        "--out", type=Path, default=None, help="output directory (default evals/<SAE name>)"
    )
    evaluate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (dotted, e.g. eval.samples=8192); repeatable",
    )  # fmt: skip
    evaluate.set_defaults(handler=_eval)

    lab = sub.add_parser("lab", help="reproduce known results on toy models")
    lab_sub = lab.add_subparsers(dest="lab", required=True)
    superposition = lab_sub.add_parser(
        "superposition", help="Toy Models of Superposition's pictures, on trained toy models"
    )
    superposition.add_argument(
        "--out", type=Path, default=Path("lab/superposition"), help="output directory"
    )
    superposition.add_argument(
        "--quick", action="store_true", help="fewer training steps and a coarser grid"
    )
    superposition.set_defaults(handler=_lab_superposition)

    report = sub.add_parser("report", help="(re)build DIR/report.html from a finished run")
    report.add_argument("run_dir", type=Path, metavar="DIR", help="a run directory")
    report.set_defaults(handler=_report)
    _service_parsers(sub)

    bench = sub.add_parser("bench", help="benchmarks that print side-by-side figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    bench_toy = bench_sub.add_parser(
        "toy", help="ours vs SAELens's trainer, same data, time and learning-rate sweep"
    )
    _config_args(bench_toy, out=False)
    bench_toy.add_argument("--json", type=Path, default=None, help="also write every run here")
    bench_toy.add_argument(
        "--lrs",
        default="3e-4,1e-3,3e-3",
        help="learning rates both sides train at; each side's best is shown next to its default "
        "(ours: train.lr, SAELens: 3e-4) (default: %(default)s)",
    )
    bench_toy.set_defaults(handler=_bench_toy)

    train = bench_sub.add_parser(
        "train",
        help="training samples/s: ours vs SAELens's SAETrainer, sparsify's TopK step (with the "
        "bench extra) and a dense-matmul bound",
    )
    train.add_argument("--json", type=Path, default=None, help="write rows as JSON here")
    train.add_argument(
        "--points", default="128x1024x4096,512x8192x4096", help="shapes DxMxB, comma-separated"
    )
    train.add_argument("--archs", default="topk,relu", help="topk and/or relu, comma-separated")
    train.add_argument("--warmup", type=int, default=3, help="untimed steps first, each side")
    train.add_argument("--steps", type=int, default=15, help="timed rounds (one step of each side per round)")
    train.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where both sides train"
    )
    train.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="our encoder matmul (train.precision); SAELens runs fp32, its default",
    )
    train.add_argument(
        "--threads", type=int, default=None, help="CPU threads for both sides (default: torch's)"
    )
    train.set_defaults(handler=_bench_train)

    suite = bench_sub.add_parser(
        "suite", help="the ground-truth suite (configs/suite) on the defaults: ours, SAELens, oracle"
    )
    suite.add_argument("--quick", action="store_true", help="a representative third of the cases")
    suite.add_argument("--archs", default="topk", help="architectures, comma-separated")
    suite.add_argument("--trainers", default="ours,saelens,oracle", help="comma-separated")
    suite.add_argument("--cases", default=None, help="case names, comma-separated (default: all)")
    suite.add_argument("--json", type=Path, default=None, help="write rows, settings, summary here")
    suite.add_argument(
        "--curves", type=Path, default=None,
        help="write the samples-vs-mcc curves here, as an HTML page",
    )  # fmt: skip
    suite.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a default in every case (ablations; not for headline figures)",
    )
    suite.set_defaults(handler=_bench_suite)

    synth = bench_sub.add_parser(
        "synth", help="synthetic data rows/s: our sampler vs sae_lens's, and realised L0"
    )
    synth.add_argument(
        "--config", type=Path, default=None,
        help="config with data.synthetic (default: configs/toy/synthsaebench16k.yaml)",
    )
    synth.add_argument("--rows", type=int, default=8192, help="rows per side per round")
    synth.add_argument("--batch", type=int, default=1024, help="rows per draw")
    synth.add_argument("--repeats", type=int, default=2, help="alternating rounds")
    synth.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    synth.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key (dotted); repeatable",
    )
    synth.set_defaults(handler=_bench_synth)

    multi = bench_sub.add_parser(
        "multi", help="N SAEs on shared batches vs N separate runs, wall-clock"
    )
    multi.add_argument("--json", type=Path, default=None, help="write the row as JSON here")
    multi.add_argument("--saes", type=int, default=4, help="how many SAEs (a sweep over k)")
    multi.add_argument("--steps", type=int, default=25, help="training steps of each run")
    multi.add_argument("--point", default="128x1024x4096", help="shape DxMxB")
    multi.set_defaults(handler=_bench_multi)

    bench_harvest = bench_sub.add_parser(
        "harvest", help="harvest tokens/s: ours vs the bare forward pass vs SAELens's cache runner"
    )
    bench_harvest.add_argument("--json", type=Path, default=None, help="write the row as JSON here")
    bench_harvest.add_argument("--layers", type=int, default=12, help="blocks of the random model")
    bench_harvest.add_argument("--d-model", type=int, default=768, help="width of the random model")
    bench_harvest.add_argument("--context-size", type=int, default=128, help="tokens per window")
    bench_harvest.add_argument("--batch-sequences", type=int, default=16, help="windows per pass")
    bench_harvest.add_argument("--tokens", type=int, default=16_384, help="tokens per mode per round")
    bench_harvest.add_argument("--shard-tokens", type=int, default=8192, help="rows per shard")
    bench_harvest.add_argument(
        "--hook", default=None, help="hook to harvest (default blocks.{min(8, layers-1)}.hook_resid_pre)"
    )
    bench_harvest.add_argument("--repeats", type=int, default=2, help="rounds of the three modes")
    bench_harvest.add_argument("--threads", type=int, default=None, help="CPU threads (torch's)")
    bench_harvest.set_defaults(handler=_bench_harvest)

    bench_store = bench_sub.add_parser("store", help="store read GB/s next to a numpy memmap")
    bench_store.add_argument("store", type=Path, help="store directory")
    bench_store.add_argument("--batch-size", type=int, default=4096, help="rows per read")
    bench_store.add_argument("--hook", default=None, help="hook to read (default: the only one)")
    bench_store.add_argument("--repeats", type=int, default=3, help="rounds of each reader")
    bench_store.set_defaults(handler=_bench_store)

    bench_serve = bench_sub.add_parser(
        "serve", help="a job through sae serve vs sae run directly; listing 1,000 jobs"
    )
    bench_serve.add_argument("--config", type=Path, default=None, help="(a built-in tiny one)")
    bench_serve.add_argument("--repeats", type=int, default=1, help="runs each way, alternating (0: listing only)")
    bench_serve.add_argument("--jobs", type=int, default=1000, help="jobs in the listed state")
    bench_serve.add_argument("--requests", type=int, default=200, help="timed GET /api/jobs")
    bench_serve.add_argument("--json", type=Path, default=None, help="write the row as JSON here")
    bench_serve.set_defaults(handler=_bench_serve)

    startup = bench_sub.add_parser(
        "startup",
        help="seconds to an answer (--help, --version, config errors, a no-op rerun) in fresh "
        "processes, next to import torch",
    )
    startup.add_argument("--repeats", type=int, default=5, help="runs of each case (median shown)")
    startup.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    startup.set_defaults(handler=_bench_startup)
    return parser


def _subparser_class() -> type[argparse.ArgumentParser]:
    """Subcommands' parsers show defaults in their help too."""

    class Parser(argparse.ArgumentParser):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.setdefault("formatter_class", _HelpFormatter)
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    return Parser


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
