"""The ``conceptevo`` command line: parse, call the pipeline, report. Nothing else."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from contextlib import contextmanager

from . import __version__
from .errors import ConceptEvoError, ConfigError


def _json_table(text: str | None, option: str, example: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{option} must be a JSON object like '{example}': {e}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object like '{example}'")
    return value


def _kwargs(text: str | None) -> dict:
    return _json_table(text, "--kwargs", '{"num_classes": 10}')


@contextmanager
def _writing(root, command: str):
    """The workspace's write lock for the command's duration (a second writer waits); the
    temporary files of killed writers are swept once it is held."""
    from pathlib import Path

    from .workspace.atomic import clean_temporaries
    from .workspace.lock import workspace_lock

    with workspace_lock(root, f"conceptevo {command}"):
        if (Path(root) / "conceptevo.json").is_file():
            clean_temporaries(root)
        yield


# --------------------------------------------------------------------------- commands
def cmd_layers(args) -> int:
    import torch

    from .models.adapter import ModelAdapter
    from .models.checkpoints import load_checkpoint
    from .models.registry import build_model

    model = build_model(args.arch, _kwargs(args.kwargs)).eval()
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, args.trust_checkpoints, args.arch)
        print(f"checkpoint {args.checkpoint}: loaded and validated against {args.arch}")
    size = _layers_input_size(model, args.arch, args.input_size)
    output = int(args.output) if args.output and args.output.lstrip("-").isdigit() \
        else args.output
    layouts = _json_table(args.layouts, "--layouts", '{"blocks.0.mlp.act": "tokens"}')
    adapter = ModelAdapter(model, args.layers, "max", output, layouts, args.tokens)
    infos = adapter.describe(torch.zeros(1, 3, size, size))
    if adapter.default_rule:
        print(f"layers: {adapter.default_rule} (the default for this model; --layers to "
              "choose)")
    width = max(len(i.name) for i in infos)
    print(f"{'layer':<{width}}  {'type':<12} {'layout':<9} {'channels':>8}  {'map':>9}  "
          "neurons")
    for info in infos:
        hw = f"{info.map_size[0]}x{info.map_size[1]}"
        layout = info.layout + (f"+{info.prefix}" if info.prefix else "")
        print(f"{info.name:<{width}}  {info.type:<12} {layout:<9} {info.channels:>8}  "
              f"{hw:>9}  {info.offset}-{info.offset + info.channels - 1}")
    print(f"{len(infos)} layers, {sum(i.channels for i in infos)} neurons "
          f"(input {size}x{size}; layout tokens+N: N class/register tokens before the patch "
          "grid)" if any(i.prefix for i in infos) else
          f"{len(infos)} layers, {sum(i.channels for i in infos)} neurons "
          f"(input {size}x{size})")
    return 0


def _layers_input_size(model, arch: str, given: int | None) -> int:
    """``--input-size``, checked against the model; without it 224, or the size a model with
    a fixed-size head needs (said on stdout)."""
    from .models.input_size import check_input_size

    size = given or 224
    if size < 8:
        raise ConfigError(f"--input-size must be >= 8, not {size}")
    check = check_input_size(model, size)
    if check.fits:
        return size
    fit = f"; pass --input-size {check.suggestion} (a size that fits)" if check.suggestion \
        else "; pass --input-size with the size it was trained on"
    if given is not None or check.suggestion is None:
        raise ConfigError(f"{arch} does not take {size}x{size} images: {check.reason}{fit}")
    print(f"input size: {check.suggestion} ({arch} does not take 224x224 images: "
          f"{check.reason}; pass --input-size to choose)")
    return check.suggestion


def cmd_stimuli(args) -> int:
    from . import distributed
    from .config import load_config
    from .pipeline import run_stimuli_stage

    cfg = load_config(args.config)
    if args.trust_checkpoints:
        cfg.trust_checkpoints = True
    with _writing(cfg.workspace_path, "stimuli"), distributed.session(cfg.device) as ctx:
        ws, report = run_stimuli_stage(cfg)  # torchrun: shared out, rank 0 writes
    if ctx.is_main:
        print(f"stimuli: {len(report.computed)} checkpoint(s) computed, {len(report.skipped)} "
              f"already up to date, in {ws.root}")
    return 0


def cmd_build(args) -> int:
    from . import distributed
    from .config import load_config
    from .pipeline import run_build
    from .workspace.artifacts import load_fidelity

    cfg = load_config(args.config)
    if args.trust_checkpoints:
        cfg.trust_checkpoints = True
    with _writing(cfg.workspace_path, "build"), distributed.session(cfg.device) as ctx:
        out = run_build(cfg)  # torchrun: shared out, rank 0 writes
    if not ctx.is_main:
        return 0
    ws = out["workspace"]
    report = load_fidelity(ws)
    fid = report["fidelity"]
    print(f"stimuli: {len(out['stimuli'].computed)} checkpoint(s) computed, "
          f"{len(out['stimuli'].skipped)} up to date")
    print(f"space: base {_base_text(report['base'])}, {report['info']['n_valid']} neurons "
          f"in the space; image embedding RMSE {report['rmse']:.4f}; fidelity: mean cosine "
          f"{fid['mean_cosine']:.3f}, top-1 {fid['top1']:.1%}, top-10 {fid['top10']:.1%}")
    print(f"projections: {len(out['space']['projected'])} checkpoint(s) placed on the map")
    for check in out["classes"]:
        print(f"probe accuracy: run {check['run']!r} epoch {check['epoch']}: "
              f"{check['accuracy']:.1%} (chance {check['chance']:.1%})"
              + ("  <- see the warning above" if check["message"] else ""))
    for run, data in out["diagnosis"]["runs"].items():
        flags = "; ".join(f"epoch {f['epoch']}: {f['rule']}" for f in data["flags"])
        print(f"diagnosis: run {run!r}: {flags or 'no flag'}")
    for path in out["figures"]:
        print(f"figure: {path}")
    print(f"workspace: {ws.root} (`conceptevo diagnose {ws.root}` for the diagnosis table, "
          f"`conceptevo serve {ws.root}` for the dashboard)")
    return 0


def _base_text(desc: dict) -> str:
    if desc["kind"] == "run":
        return f"run {desc['run']!r} epoch {desc['epoch']}"
    return f"{desc['arch']} ({desc['checkpoint']})"


def cmd_export(args) -> int:
    from .export import export
    from .workspace import Workspace

    files, skipped = export(Workspace(args.workspace), args.out)
    for path in files:
        print(path)
    for note in skipped:
        print(f"not written: {note}")
    return 0


def cmd_importance(args) -> int:
    from . import distributed
    from .config import load_config
    from .pipeline import open_workspace
    from .stages.context import Context
    from .stages.importance import (
        check_class_order_for,
        ensure_importance,
        resolve_class,
        verification_table,
    )
    from .stages.probe import ensure_probe_sets

    cfg = load_config(args.config)
    if args.trust_checkpoints:
        cfg.trust_checkpoints = True
    cfg.run(args.run)  # an unknown run fails here, naming the runs
    if bool(args.classes) == args.all_classes:
        raise ConfigError("give --class C (repeatable) or --all-classes")
    with _writing(cfg.workspace_path, "importance"), distributed.session(cfg.device) as ctx:
        study = Context.create(cfg, open_workspace(cfg))  # torchrun: shared out, rank 0 writes
        ws = study.ws
        probe, heldout = ensure_probe_sets(study)
        classes = list(range(len(probe.classes))) if args.all_classes else \
            [resolve_class(probe, c) for c in args.classes]
        if ctx.is_main:
            check_class_order_for(study, probe, args.run, args.to_epoch)
        summaries = ensure_importance(study, probe, heldout, args.run, classes,
                                      [(args.from_epoch, args.to_epoch)])
    if not ctx.is_main:
        return 0
    for s in summaries:
        result = s["result"]
        print(f"\nclass {s['class_name']!r} ({s['class']}), run {s['run']!r}, epochs "
              f"{s['from']} -> {s['to']}: most important evolutions per layer "
              "(channel: importance)")
        for li, info in enumerate(result.layers):
            top = result.layer_ranking(li)[:5]
            cells = ", ".join(f"{ch}: {result.score[info.offset + ch]:.2f}" for ch in top)
            print(f"  {info.name:<24} {cells}")
    for split in ("train", "heldout"):
        if any(s[split] for s in summaries):
            print()
            print(verification_table(summaries, split)[0])
    print(f"\nstored in {ws.root / 'importance' / args.run}")
    return 0


def cmd_serve(args) -> int:
    import math

    from .serve.app import serve

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a port (0 .. 65535)")
    if not (math.isfinite(args.request_timeout) and 0 < args.request_timeout <= 3600):
        raise ConfigError(f"--request-timeout {args.request_timeout} must be between 0 and "
                          "3600 seconds")
    print(f"ConceptEvo dashboard for {args.workspace}: http://{args.host}:{args.port}/ "
          "(Ctrl-C to stop)")
    serve(args.workspace, host=args.host, port=args.port, allow_hosts=args.allow_host,
          request_timeout=args.request_timeout)
    return 0


def cmd_report(args) -> int:
    from .report import write_report

    out = write_report(args.workspace, args.output, patch_epochs=args.patch_epochs)
    size = out.stat().st_size / 1e6
    print(f"report: {out} ({size:.1f} MB, self-contained: open it in any browser, offline)")
    return 0


def cmd_diagnose(args) -> int:
    from .stages.diagnosis import diagnosis_text, run_diagnosis
    from .workspace import Workspace

    ws = Workspace(args.workspace)
    with _writing(ws.root, "diagnose"):
        report = run_diagnosis(ws)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(diagnosis_text(report))
    return 0


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from .config import load_config
    from .stages.evaluation import evaluation_text, run_evaluation
    from .workspace import Workspace
    from .workspace.artifacts import evaluation_path, study_config

    target = Path(args.workspace)
    if target.is_file():
        cfg = load_config(target)
        ws = Workspace(cfg.workspace_path)
    else:
        ws = Workspace(target)
        cfg = study_config(ws)
    if args.trust_checkpoints:
        cfg.trust_checkpoints = True
    with _writing(ws.root, "evaluate"):
        report = run_evaluation(cfg, ws)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(evaluation_text(report))
        plots = (report["alignment"] or {}).get("plots") or {}
        written = [evaluation_path(ws)] + \
            [ws.path(p) for p in plots.values()]
        print(f"\nwritten: {', '.join(map(str, written))}")
    return 0


def cmd_train(args) -> int:
    from .config import load_config
    from .pipeline import open_workspace
    from .stages.context import Context
    from .stages.train import ensure_training

    cfg = load_config(args.config)
    with _writing(cfg.workspace_path, "train"):
        ws = open_workspace(cfg)
        report = ensure_training(Context.create(cfg, ws), args.run or None)
    if not any(r.train is not None for r in cfg.runs):
        print("no run of this config has a `train` table; nothing to train")
        return 0
    print(f"train: {len(report.computed)} epoch(s) trained, {len(report.skipped)} run(s) "
          f"already finished; metrics in {ws.root / 'runs'}")
    return 0


def cmd_demo(args) -> int:
    from .demo import demo_arch, run_demo

    workspace = args.workspace or demo_arch(args.arch).workspace
    with _writing(workspace, "demo"):
        run_demo(workspace, quick=args.quick, arch=args.arch)
    if args.serve:
        from .serve.app import serve

        print(f"serving the dashboard at http://127.0.0.1:{args.port}/ (Ctrl-C to stop)")
        serve(workspace, port=args.port)
    return 0


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conceptevo",
        description="See how the concepts learned by an image classifier evolve in training.")
    parser.add_argument("--version", action="version", version=f"conceptevo {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("layers", help="list the layers that can be probed, with channel counts")
    p.add_argument("--arch", required=True,
                   help="torchvision:NAME, conceptevo:NAME or package.module:function")
    p.add_argument("--kwargs", help="JSON keyword arguments of the architecture")
    p.add_argument("--checkpoint", help="load and validate this checkpoint file")
    p.add_argument("--layers", help="selection: names, globs (layer*.conv2), comma-separated; "
                                    "default every Conv2d")
    p.add_argument("--input-size", type=int,
                   help="probe image size (default 224, or the size a model with a fixed-size "
                        "head takes)")
    p.add_argument("--output", help="key or index of the logits when the model returns a "
                                    "tuple or a dict")
    p.add_argument("--layouts", help="JSON object: layer (or glob) -> conv, nhwc, tokens or "
                                     "flat, for layers whose layout cannot be detected")
    p.add_argument("--tokens", default="patches", choices=("patches", "all", "cls"),
                   help="how a token layer's neurons are read (default: over its patch "
                        "tokens)")
    p.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that contain arbitrary pickled objects")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("stimuli", help="compute the stimuli of every checkpoint of a study")
    p.add_argument("--config", required=True, help="the study TOML file")
    p.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that contain arbitrary pickled objects")
    p.set_defaults(func=cmd_stimuli)

    p = sub.add_parser("build", help="run every missing stage of a study: stimuli, base "
                                     "space, image embedding, projections, 2-D map")
    p.add_argument("--config", required=True, help="the study TOML file")
    p.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that contain arbitrary pickled objects")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("export", help="write a workspace as CSV / .npy files")
    p.add_argument("workspace", help="the workspace directory")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("importance", help="rank the concept evolutions that matter for a "
                                          "class between two epochs, and verify them")
    p.add_argument("--config", required=True, help="the study TOML file")
    p.add_argument("--run", required=True, help="the run")
    p.add_argument("--class", dest="classes", action="append", default=[],
                   help="class name or index (repeatable)")
    p.add_argument("--all-classes", action="store_true", help="every class")
    p.add_argument("--from", dest="from_epoch", type=int,
                   help="earlier epoch (default: the epoch before --to)")
    p.add_argument("--to", dest="to_epoch", type=int,
                   help="later epoch (default: the epoch after --from; with neither, the "
                        "last two epochs)")
    p.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that contain arbitrary pickled objects")
    p.set_defaults(func=cmd_importance)

    p = sub.add_parser("serve", help="the dashboard: a local web app over a workspace")
    p.add_argument("workspace", help="the workspace directory")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (repeatable; *.example.org "
                        "for a domain), e.g. the machine's name with --host 0.0.0.0; other "
                        "names are refused (DNS rebinding)")
    p.add_argument("--request-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds a connection has to send a whole request (default 10)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="the dashboard as one self-contained HTML file")
    p.add_argument("workspace", help="the workspace directory")
    p.add_argument("-o", "--output", default="report.html", help="output file (report.html)")
    p.add_argument("--patch-epochs", type=int, default=2,
                   help="epochs per run whose patches are embedded (default 2: the first "
                        "and the last)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagnose", help="training-issue diagnosis of every run: metrics per "
                                        "epoch and flags")
    p.add_argument("workspace", help="the workspace directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("evaluate", help="concept labels from pixel masks, the alignment study "
                                        "of the unified space against baselines, faithfulness")
    p.add_argument("workspace", help="the workspace directory (or the study TOML file)")
    p.add_argument("--json", action="store_true", help="print evaluation.json")
    p.add_argument("--trust-checkpoints", action="store_true",
                   help="allow checkpoints that contain arbitrary pickled objects")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="train the runs of a study that have a `train` table")
    p.add_argument("--config", required=True, help="the study TOML file")
    p.add_argument("--run", action="append", help="train only this run (repeatable)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the whole method on generated data, no download")
    p.add_argument("--arch", choices=("cnn", "vit"), default="cnn",
                   help="the classifier: cnn, a small VGG (default), or vit, a small vision "
                        "transformer (conceptevo:small_vit)")
    p.add_argument("--workspace", default=None,
                   help="directory of the demo study (default demo-workspace, "
                        "demo-workspace-vit for --arch vit)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller demo (cnn: under 90 s)")
    p.add_argument("--serve", action="store_true", help="then serve the dashboard")
    p.add_argument("--port", type=int, default=8765, help="dashboard port (default 8765)")
    p.set_defaults(func=cmd_demo)
    return parser


DISTRIBUTED_COMMANDS = ("build", "stimuli", "importance")


def _check_distributed(command: str) -> None:
    """Under torchrun, only the commands that share their work out may run: N copies of any
    other command would each do all of it, in the same workspace (docs/scaling.md)."""
    from .distributed import env_world

    try:
        world = env_world()[1]
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    if world > 1 and command not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"`conceptevo {command}` does not run under torchrun (WORLD_SIZE="
                          f"{world}); run it as a single process. Under torchrun: "
                          f"{', '.join(DISTRIBUTED_COMMANDS)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--"]:  # `torchrun ... -m conceptevo -- importance --run R` (scaling.md)
        argv = argv[1:]
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    try:
        _check_distributed(args.command)
        return args.func(args) or 0
    except ConceptEvoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept and the next run resumes from them",
              file=sys.stderr)
        return 130


if __name__ == "__main__":  # python -m conceptevo.cli
    sys.exit(main())
