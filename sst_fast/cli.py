"""``sst-fast``: train, evaluate, predict, run the demo and the ablations, show what is installed.

Every failure a user can cause (a missing data folder, a wrong fold, an unknown backbone, an
unreadable checkpoint, a bad override) ends in its message on stderr and a non-zero exit, never a
traceback: one line ``sst-fast <command>: error: ...``, followed by the message's detail where it has
one (the unreadable files, the layout a data folder needs), at most :data:`MAX_ERROR_LINES` lines of
it. ``SST_FAST_DEBUG=1`` shows the traceback instead. Warnings meant for users are lines in the same
voice (``sst-fast <command>: warning: ...``).

``train`` and ``eval`` also run as several processes under ``torchrun`` (one per GPU, or CPU
processes with ``gloo``): see :mod:`sst_fast.engine.distributed`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import warnings
from pathlib import Path

from .files import first_line
from .predict import DEFAULT_MAX_PIXELS, read_photo
from .protocol import PROTOCOLS, protocol_for

EXIT_ERROR = 2
# An error's detail is shown up to this many lines (each cut at MAX_ERROR_LINE characters); the rest is counted.
MAX_ERROR_LINES = 40
MAX_ERROR_LINE = 400
EXIT_INTERRUPTED = 130
# Where results go when no folder is named: under runs/, as training runs do (one folder to ignore or clean).
DEFAULT_PREDICTION_DIR = Path("runs") / "prediction"
DEFAULT_EVAL_DIR = Path("runs") / "eval"
# The files of one prediction (``predict --out``): replaced together, so a folder never mixes two predictions.
PREDICTION_FILES = ("mask.png", "overlay.png", "figure.png", "prediction.json")
# The index of a many-query prediction (``predict --query A B ...``): its files are replaced together too.
PREDICTIONS_INDEX = "predictions.json"
# The files a --query folder contributes, by extension (case-insensitive).
QUERY_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
RUN_FOLDER_CHECKPOINT = "a run folder (its best checkpoint; its last one, with a warning, before any validation)"
# The subcommands that run as several processes under torchrun (the others would only repeat their work).
DISTRIBUTED_COMMANDS = ("train", "eval", "benchmark")


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.option_strings
            and "default" not in text
            and action.default is not None
            and action.default is not argparse.SUPPRESS
            and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        ):
            shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {shown})"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        # argparse prints the whole usage block; one line with a pointer to --help reads better.
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sst-fast", description="SST few-shot segmentation: train, evaluate, predict.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="episodic training on the base classes of a fold",
        description="Train SST. The configuration is a YAML file or a packaged name "
        "(pascal, coco, fss, synthetic), then KEY=VALUE overrides anywhere on the line (later ones win), "
        "e.g. optim.lr=0.001 data.fold=1 model.ssm=false.",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides (section.key=value)")
    train.add_argument("--config", "-c", help="YAML file or packaged configuration name (default: built-in defaults)")
    train.add_argument(
        "--run-dir", type=Path, help="the run folder (default: runs/<dataset>-fold<fold>-<shots>shot-<time>)"
    )
    train.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly (default: a new run)"
    )
    train.add_argument(
        "--max-steps", type=_count, help="stop (resumably) after this global step (default: train to the end)"
    )
    train.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    _progress_flag(train)
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate a checkpoint (or any model with SST's call signature) on the novel classes of a fold",
        description="Evaluate a checkpoint (a .pt file or a run folder: its best checkpoint), or with "
        "--model any model with SST's call signature. Data set and fold default to the checkpoint's "
        "training run. --protocol draws and scores the episodes as SST, PFENet or HSNet do.",
    )
    evaluate.add_argument(
        "checkpoint", type=Path, nargs="?", help=f"a checkpoint file, or {RUN_FOLDER_CHECKPOINT}"
    )
    evaluate.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="evaluate FACTORY() (FACTORY(checkpoint) when a checkpoint is given) from MODULE, a module "
        "name or a .py file: a model(query, support_images, support_masks) -> logits [B, 2, H, W] "
        "(default: the checkpoint's SST)",
    )
    evaluate.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="how episodes are drawn and scored: sst (this project's), pfenet or hsnet (as their test code); "
        "default: sst, or the protocol of the --manifest files",
    )
    evaluate.add_argument(
        "--dataset", help="pascal, coco, fss, folder (your class folders) or synthetic (default: the training run's)"
    )
    evaluate.add_argument("--root", help="the data folder (default: the training run's)")
    evaluate.add_argument(
        "--fold", help="the fold, 0-3; FSS-1000: test or val; folder: 0..k-1 (default: the training run's)"
    )
    evaluate.add_argument(
        "--shots", type=_count, help="support images per episode (default: 1, or the manifests')"
    )
    evaluate.add_argument(
        "--episodes",
        type=_count,
        help="episodes per seed (default: the protocol's, sst 1000; or the manifests')",
    )
    evaluate.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="episode seeds, one run per seed (default: the protocol's: sst 0-4 on PASCAL-5i, 0-9 on COCO-20i, "
        "0 elsewhere; or the manifests')",
    )
    evaluate.add_argument(
        "--manifest",
        type=Path,
        nargs="+",
        help="replay the episodes of these manifests, which decide the shots, episodes, seeds, fold and protocol "
        "(default: sample them)",
    )
    evaluate.add_argument(
        "--allow-seen-classes",
        action="store_true",
        help="score test classes the checkpoint trained on (another fold's base classes); refused otherwise, "
        "and named on the card when allowed",
    )
    evaluate.add_argument("--original-size", action="store_true", help="score at each label's own size")
    evaluate.add_argument("--fusion", choices=("weighted", "average", "max"), help="K-shot fusion (default: trained)")
    evaluate.add_argument(
        "--size", type=int, nargs="+", help="network input size H [W] (default: trained; needed with --model)"
    )
    evaluate.add_argument("--batch-size", type=_count, default=8, help="episodes per forward pass")
    evaluate.add_argument("--workers", type=_workers, default=0, help="data loader processes")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    evaluate.add_argument("--reference", action="store_true", help="run the plain-PyTorch reference model")
    evaluate.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off", help="mixed precision (autocast)")
    evaluate.add_argument(
        "--out",
        type=Path,
        help="output folder (default: one per setting, in the checkpoint's run folder, else under runs/eval/)",
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace the results of another evaluation in --out"
    )
    evaluate.add_argument(
        "--save-predictions",
        type=_count,
        metavar="N",
        help="also draw the first N episodes of the first seed (at most its episodes) as figures in "
        "OUT/predictions/, with an index.html of their classes and IoUs as scored; it replaces an earlier "
        "gallery there (default: none, and an earlier gallery is removed)",
    )
    _progress_flag(evaluate)
    evaluate.set_defaults(handler=_eval)

    predict = commands.add_parser(
        "predict",
        help="segment query images given annotated support images",
        description="Segment one query image, or many (files and folders), given K annotated support images. "
        "One --query FILE writes OUT/mask.png, OUT/overlay.png and OUT/prediction.json; several queries write "
        "OUT/<stem>.png and OUT/<stem>-overlay.png per query and an index OUT/predictions.json, the supports "
        "encoded and tuned once for all. A query that cannot be read is reported and skipped, the others still "
        "written: the exit status is then 2 (as for any error), 0 when every query was written.",
    )
    predict.add_argument("checkpoint", type=Path, help=f"a checkpoint file, or {RUN_FOLDER_CHECKPOINT}")
    predict.add_argument(
        "--query",
        type=Path,
        nargs="+",
        required=True,
        help="the image to segment; or several images and folders (their images by extension: "
        + ", ".join(QUERY_SUFFIXES)
        + ")",
    )
    predict.add_argument("--batch-size", type=_count, default=8, help="queries per network batch, with several queries")
    predict.add_argument("--support", type=Path, nargs="+", required=True, help="K support images")
    predict.add_argument(
        "--mask",
        type=Path,
        nargs="+",
        required=True,
        help="their masks (PNG): 0/1/255 (255 ignore), or 0/255 or 0/N binary, or with --class-id",
    )
    predict.add_argument(
        "--class-id",
        type=int,
        nargs="+",
        help="the label that marks the object: one for every mask, or one per mask (default: each mask's one label)",
    )
    predict.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_PREDICTION_DIR,
        help="output folder; it holds one prediction: an earlier one's files there are replaced",
    )
    predict.add_argument("--size", type=int, nargs="+", help="network input size H [W] (default: trained)")
    predict.add_argument("--figure", action="store_true", help="also draw the tuning figure (paper Fig. 3/6)")
    predict.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels than this (a guard against decompression bombs)",
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    _progress_flag(predict)
    predict.set_defaults(handler=_predict)

    demo = commands.add_parser("demo", help="train SST and its baseline on the synthetic data set; write a report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's folder (runs and report)")
    demo.add_argument("--quick", action="store_true", help="a smoke test in seconds (numbers meaningless)")
    demo.add_argument(
        "--episodes", type=_count, help="evaluation episodes per seed (default: 1000 1-shot, 300 5-shot)"
    )
    demo.add_argument("--seeds", type=int, nargs="+", help="evaluation seeds (default 0)")
    demo.add_argument(
        "--protocol", choices=PROTOCOLS, default="sst", help="how the test episodes are drawn and scored"
    )
    demo.add_argument(
        "--train-seeds", type=int, nargs="+", help="run.seed of each model's training runs (default 0 1)"
    )
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the synthetic configuration")
    _progress_flag(demo)
    demo.set_defaults(handler=_demo)

    ablation = commands.add_parser(
        "ablation", help="the paper's Table 1 and Table 2, or the tuning step's study (--study step), as one command"
    )
    ablation.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides")
    ablation.add_argument("--config", "-c", default="synthetic", help="YAML file or packaged configuration name")
    ablation.add_argument("--out", type=Path, required=True, help="the study's folder (runs, tables)")
    ablation.add_argument(
        "--study",
        choices=("tables", "step"),
        default="tables",
        help="tables: the paper's Table 1 and 2; step: the tuning step's scale, form and order (default: tables)",
    )
    ablation.add_argument(
        "--episodes", type=_count, help="test episodes per seed (default: the protocol's; sst 1000)"
    )
    ablation.add_argument(
        "--seeds", type=int, nargs="+", help="evaluation seeds (default: the protocol's; --study step: one)"
    )
    ablation.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="sst",
        help="how the test episodes are drawn and scored (--study step: sst only)",
    )
    ablation.add_argument(
        "--train-seeds", type=int, nargs="+", default=[0], help="run.seed of each training run of every variant"
    )
    ablation.add_argument(
        "--probes", type=_count, default=200, help="--study step: test episodes the step's probe measures"
    )
    ablation.add_argument(
        "--folds",
        nargs="+",
        metavar="FOLD",
        help="--study tables: on each of these folds (0-3; FSS-1000: test val), a column per fold and their mean "
        "(default: data.fold alone)",
    )
    _progress_flag(ablation)
    ablation.set_defaults(handler=_ablation)

    bench = commands.add_parser(
        "benchmark",
        help="the field's table: train and evaluate a configuration on every fold, 1- and 5-shot, as one command",
        description="Train the configuration once per fold (and per training seed) on the fold's base classes, "
        "evaluate each run on the fold's novel classes for every K in --shots as sst-fast eval does (saved in "
        "the run folder's eval/), and write OUT/benchmark.md and OUT/benchmark.json: mIoU and FB-IoU per fold "
        "and their mean, ± 95% CI over evaluation and training seeds, the protocol card and every manifest's "
        "SHA-256. Run it again to continue a stopped benchmark: finished runs and evaluations are reused. "
        "Runs under torchrun, e.g. torchrun --nproc-per-node 8 -m sst_fast benchmark --config pascal ...",
    )
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides (data.root=...)")
    bench.add_argument("--config", "-c", required=True, help="YAML file or packaged configuration name")
    bench.add_argument("--out", type=Path, required=True, help="the benchmark's folder (runs, tables)")
    bench.add_argument(
        "--folds",
        nargs="+",
        metavar="FOLD",
        help="the folds: 0-3; FSS-1000: test and/or val (default: 0 1 2 3; FSS-1000: test)",
    )
    bench.add_argument("--shots", type=_count, nargs="+", default=[1, 5], help="support images per episode, each K")
    bench.add_argument("--episodes", type=_count, help="test episodes per seed (default: the protocol's; sst 1000)")
    bench.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="evaluation seeds (default: the protocol's: sst 0-4 on PASCAL-5i, 0-9 on COCO)",
    )
    bench.add_argument(
        "--protocol", choices=PROTOCOLS, default="sst", help="how the test episodes are drawn and scored"
    )
    bench.add_argument("--train-seeds", type=int, nargs="+", default=[0], help="run.seed of each fold's runs")
    _progress_flag(bench)
    bench.set_defaults(handler=_benchmark)

    compare = commands.add_parser(
        "compare",
        help="the paired difference B − A of two models evaluated on the same episodes, with 95%% CIs",
        description="Compare two evaluations of the same episodes (the same manifests, protocol and scoring): "
        "mIoU, FB-IoU and per-class IoU of B − A, with a 95% CI from a paired bootstrap over episodes "
        "(resampled within each class) and, with several training seeds per side, a t-interval over them. "
        "Each EVAL is an evaluation folder (sst-fast eval --out), or a folder holding several (one per "
        "training seed, paired with the other side's by training seed).",
    )
    compare.add_argument("evaluations", nargs="*", type=Path, metavar="EVAL", help="A, then B")
    compare.add_argument(
        "--a",
        nargs="+",
        metavar="EVAL",
        help="A's evaluations, one per training seed (folders or glob patterns; default: the first EVAL)",
    )
    compare.add_argument(
        "--b",
        nargs="+",
        metavar="EVAL",
        help="B's evaluations, one per training seed (folders or glob patterns; default: the second EVAL)",
    )
    compare.add_argument("--bootstrap", type=_count, default=2000, help="bootstrap replicates")
    compare.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's draws")
    compare.add_argument(
        "--out", type=Path, metavar="FILE.json", help="also write the comparison as JSON (default: stdout only)"
    )
    compare.add_argument(
        "--markdown", type=Path, metavar="FILE.md", help="also write the Markdown report (default: stdout only)"
    )
    compare.set_defaults(handler=_compare)

    data = commands.add_parser("data", help="check a data folder before training on it")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser, metavar="ACTION")
    check = data_commands.add_parser(
        "check",
        help="read every file of a data set and count each fold's classes and images",
        description="Check the data set of a configuration, e.g. sst-fast data check --config pascal "
        "data.root=/data/VOC2012: every image and label readable, and per fold the images and classes "
        "that training and testing will draw from (classes too thin for an episode are flagged). "
        "Exit status 0 when all is well, 2 otherwise.",
    )
    check.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides (data.root=...)")
    check.add_argument("--config", "-c", help="YAML file or packaged configuration name (default: built-in defaults)")
    check.add_argument(
        "--no-read", dest="read", action="store_false", help="index the labels only, do not decode the images"
    )
    check.add_argument("--workers", type=_threads, default=8, help="threads that read the files")
    check.set_defaults(handler=_data_check)

    info = commands.add_parser("info", help="versions, built op backends, devices")
    info.set_defaults(handler=_info)
    return parser


def main(argv=None) -> int:
    args = parse_args(argv)
    from .data import DataError
    from .engine import distributed
    from .engine.checkpoint import CheckpointError
    from .engine.experiments import ExperimentInterrupted
    from .engine.runconfig import ConfigError
    from .engine.train import TrainingError

    user_errors = (ConfigError, CheckpointError, DataError, TrainingError, ValueError, TypeError, OSError)
    try:
        if distributed.launched() and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(
                f"{args.command} runs as one process; only {', '.join(DISTRIBUTED_COMMANDS[:-1])} and "
                f"{DISTRIBUTED_COMMANDS[-1]} run under torchrun"
            )
        with distributed.process_group(), _warnings_as_lines(args.command):
            return args.handler(args)
    except KeyboardInterrupt:
        print(f"sst-fast {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ExperimentInterrupted as error:
        print(f"sst-fast {args.command}: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_errors as error:
        if os.environ.get("SST_FAST_DEBUG"):
            raise
        print(f"sst-fast {args.command}: error: {error_text(error)}", file=sys.stderr)
        return EXIT_ERROR


def error_text(error: BaseException) -> str:
    """An error's message as the user reads it: whole, but at most :data:`MAX_ERROR_LINES` lines of at most
    :data:`MAX_ERROR_LINE` characters (a list of ten thousand unreadable files is counted, not printed)."""
    text = str(error).strip() or type(error).__name__
    lines = text.splitlines()
    shown = [line if len(line) <= MAX_ERROR_LINE else line[: MAX_ERROR_LINE - 3] + "..." for line in lines]
    if len(shown) > MAX_ERROR_LINES:
        hidden = len(shown) - (MAX_ERROR_LINES - 1)
        shown = [*shown[: MAX_ERROR_LINES - 1], f"... and {hidden} more lines (SST_FAST_DEBUG=1 shows them all)"]
    return "\n".join(shown)


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """The package's warnings (meant for users) as ``sst-fast <command>: warning: ...`` lines on stderr, once
    each; other libraries' warnings as Python shows them."""
    shown = warnings.showwarning
    package = str(Path(__file__).resolve().parent)

    def show(message, category, filename, lineno, file=None, line=None):
        if not str(Path(filename).resolve()).startswith(package):
            return shown(message, category, filename, lineno, file, line)
        if file is None:
            _say(command, "warning", str(message))
        else:
            print(f"sst-fast {command}: warning: {message}", file=file)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def parse_args(argv=None) -> argparse.Namespace:
    """The command line, with KEY=VALUE overrides accepted anywhere after the subcommand (in their order)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    takes_overrides = hasattr(args, "overrides")
    stray = [token for token in extra if not takes_overrides or token.startswith("-") or "=" not in token]
    if stray:
        command = f"{parser.prog} {args.command}"
        parser.exit(
            EXIT_ERROR, f"{command}: error: unrecognized arguments: {' '.join(stray)} (see {command} --help)\n"
        )
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _version() -> str:
    from .protocol import code_version

    return code_version().replace("sst_fast", "sst-fast", 1)


# --- subcommands --------------------------------------------------------------------------------


def _train(args) -> int:
    from .engine import distributed
    from .engine.runconfig import load_run_config
    from .engine.train import Trainer

    if args.resume is not None:
        if args.config is not None or args.run_dir is not None or args.print_config:
            raise ValueError(
                "--resume continues a run with its own configuration (see its config.yaml): "
                "drop --config/--run-dir/--print-config"
            )
        trainer = Trainer.resume(args.resume, args.overrides, progress=args.progress)
    else:
        config = load_run_config(args.config, args.overrides)
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        # Rank 0's folder (the default one is named after the time) for every rank.
        run_dir = distributed.broadcast(args.run_dir or _default_run_dir(config), distributed.current())
        trainer = Trainer(config, run_dir, progress=args.progress)
    result = trainer.fit(max_steps=args.max_steps)
    if trainer.world.main:
        print(f"{result.status} at step {result.step}; run folder {result.run_dir}")
    return EXIT_INTERRUPTED if result.status == "interrupted" else 0


def _eval(args) -> int:
    from .data import EpisodeManifest, open_dataset
    from .engine import distributed
    from .engine.evaluate import evaluate, seen_classes
    from .engine.train import resolve_device

    device = resolve_device(args.device, "--device")
    if args.model is not None:
        (model, checkpoint), data = _own_model(args, device), {}
    else:
        model, data, checkpoint = _sst_model(args, device)
    default_size = getattr(getattr(model, "config", None), "image_size", None)  # the trained size, if any
    manifests = [EpisodeManifest.load(path) for path in args.manifest] if args.manifest else None
    drawn = manifests[0] if manifests else None  # the manifests decide the data set and the fold
    dataset_name = args.dataset or (drawn.dataset.get("dataset") if drawn else None) or data.get("dataset")
    if dataset_name is None:
        raise ValueError("--dataset: a model from --model has no training run to take the data set from")
    same_data = dataset_name == data.get("dataset")
    root = args.root if args.root is not None else (data.get("root") if same_data else None)
    options = dict(data.get("options") or {}) if same_data else {}
    if args.fold is not None:
        fold = _fold(args.fold)
    elif drawn is not None and drawn.fold is not None:
        fold = drawn.fold
    elif "fold" in data:
        fold = data["fold"]
    elif dataset_name == "fss":
        fold = "test"
    else:
        raise ValueError("--fold: a model from --model has no training run to take the fold from")
    if args.size is None and default_size is None:
        raise ValueError(f"--size: {type(model).__name__} has no config.image_size; pass --size H [W]")
    size = _size(args.size, default_size)
    dataset = open_dataset(dataset_name, root, **options)
    dataset.fold_split(fold)  # a wrong fold is refused before anything is written, and classes the model saw
    seen_classes(getattr(model, "trained_on", None), dataset, fold, args.allow_seen_classes)
    setting = _eval_setting(checkpoint, dataset_name, fold, size, args, model, manifests)
    world = distributed.current()
    # The output folder is checked before the work, so that a result is never computed only to be lost.
    out = args.out or _default_eval_dir(checkpoint, setting, args)
    made = None
    problem = None
    if world.main:
        try:
            made = _claim_output(out, setting, args.overwrite)
            if args.save_predictions is not None:  # its folder is replaced whole: it must be a gallery, or absent
                from .engine.gallery import GALLERY, check_replaceable

                check_replaceable(out / GALLERY)
        except ValueError as error:
            problem = str(error)
    problem = distributed.broadcast(problem, world)
    if problem is not None:
        raise ValueError(problem)
    try:
        result = evaluate(
            model,
            dataset,
            fold,
            shots=args.shots,
            episodes=args.episodes,
            seeds=args.seeds,
            size=size,
            original_size=args.original_size,
            batch_size=args.batch_size,
            num_workers=args.workers,
            manifests=manifests,
            checkpoint=str(checkpoint) if checkpoint is not None else None,
            progress=args.progress,
            amp=args.amp,
            protocol=args.protocol,
            device=device,
            model_source=args.model,
            allow_seen_classes=args.allow_seen_classes,
        )
    except BaseException:
        if made is not None:  # a failed evaluation leaves no empty folder behind
            import shutil

            shutil.rmtree(made, ignore_errors=True)
        raise
    if not world.main:  # every rank has the same result: rank 0 writes and prints it
        return 0
    # The result on the screen first: a write that still fails (a full disk) cannot take it with it.
    print(result.card)
    print()
    print(result.table(dataset.class_names))
    print()
    for manifest in result.manifests:
        print(f"manifest seed {manifest.seed}: sha256 {manifest.sha256}")
    metrics = result.save(out)
    _write_setting(out, setting)
    print(f"results: {metrics}")
    from .engine import gallery

    if args.save_predictions is None:
        gallery.discard_predictions(out)  # an earlier evaluation's figures must not pass for this one's
    else:  # a pass of its own after the scoring: the first seed's first episodes, as they were scored
        index = gallery.save_predictions(
            model, dataset, result, args.save_predictions, out, batch_size=args.batch_size, amp=args.amp,
            device=device,
        )  # fmt: skip
        print(f"predictions: {index}")
    return 0


def _sst_model(args, device):
    """The SST model of ``args.checkpoint``, its training run's data settings and the checkpoint file."""
    from .engine.checkpoint import load_checkpoint, model_from_checkpoint

    if args.checkpoint is None:
        raise ValueError("checkpoint: name a checkpoint or a run folder, or a model with --model MODULE:FACTORY")
    state = load_checkpoint(args.checkpoint)
    _note_checkpoint(args, state)
    overrides = {"fusion": args.fusion} if args.fusion else {}
    model = model_from_checkpoint(state, device=device, fast=not args.reference, **overrides)
    return model, state["config"]["data"], Path(state["path"])


def _own_model(args, device):
    """``args.model``'s factory called (with the checkpoint, if one is named) and moved to ``device``."""
    for flag, given in (("--fusion", args.fusion), ("--reference", args.reference)):
        if given:
            raise ValueError(f"{flag} applies to SST checkpoints, not to a model from --model")
    factory = load_factory(args.model)
    checkpoint = None
    if args.checkpoint is not None:  # a run folder means its checkpoint, as for SST's own
        from .engine.checkpoint import checkpoint_file, fell_back_to_last

        checkpoint = checkpoint_file(args.checkpoint)
        note = fell_back_to_last(args.checkpoint, checkpoint)
        if note is not None:
            _say(args.command, "warning", note)
    model = factory(str(checkpoint)) if checkpoint is not None else factory()
    if not callable(model):
        raise ValueError(f"--model: {args.model} returned {type(model).__name__}, not a model (a callable)")
    import torch

    return (model.to(device) if isinstance(model, torch.nn.Module) else model), checkpoint


def _note_checkpoint(args, state: dict) -> None:
    """Tell the user when a run folder gave its latest state, not its best one."""
    from .engine.checkpoint import fell_back_to_last

    note = fell_back_to_last(args.checkpoint, state["path"])
    if note is not None:
        step = state.get("step")
        _say(args.command, "warning", note + (f" (step {step})" if step is not None else ""))


def _say(command: str, kind: str, text: str) -> None:
    """A line for the user in the CLI's voice on stderr: ``sst-fast <command>: <kind>: <text>``."""
    print(f"sst-fast {command}: {kind}: {text}", file=sys.stderr, flush=True)


def load_factory(spec: str):
    """``MODULE:FACTORY`` -> the callable FACTORY of MODULE, a module name (``package.module``) or a .py file."""
    import importlib
    import importlib.util

    module_name, colon, name = spec.rpartition(":")
    if not colon or not module_name or not name:
        raise ValueError(f"--model must be MODULE:FACTORY (a module name or a .py file, then a callable), got {spec!r}")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"--model: no file {path}")
        loader = importlib.util.spec_from_file_location(f"sst_fast_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(loader)
        sys.modules[loader.name] = module  # as an import does: dataclasses, pickling and typing look it up there
        try:
            loader.loader.exec_module(module)
        except BaseException:
            del sys.modules[loader.name]
            raise
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            raise ValueError(f"--model: cannot import {module_name} ({error})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--model: {module_name} has no callable {name}")
    return factory


def _eval_setting(checkpoint, dataset: str, fold, size, args, model, manifests) -> dict:
    """What decides an evaluation's numbers, known before it runs: two evaluations with the same setting
    (of the same checkpoint file) may share a folder, different ones may not."""
    rules = protocol_for(manifests[0].protocol if manifests else args.protocol or "sst", dataset)
    return {
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "model": args.model,
        "protocol": rules.name,
        "dataset": dataset,
        "fold": fold,
        "shots": manifests[0].shots if manifests else (args.shots or 1),
        "episodes": len(manifests[0].episodes) if manifests else (args.episodes or rules.episodes),
        "seeds": [m.seed for m in manifests] if manifests else list(args.seeds or rules.seeds),
        "manifests": [m.sha256 for m in manifests] if manifests else None,
        "input_size": list(size),
        "original_size": args.original_size,
        "fusion": getattr(getattr(model, "config", None), "fusion", None),
        "amp": args.amp,
        "reference": args.reference,
    }


SETTING_FILE = "setting.json"


def _claim_output(out: Path, setting: dict, overwrite: bool) -> Path | None:
    """Make sure ``out`` can take this evaluation's results before it runs: a writable folder that holds no
    other evaluation's results (unless ``overwrite``). Returns the outermost folder it created, if any."""
    import json
    import tempfile

    metrics = out / "metrics.json"
    if metrics.exists() and not overwrite:
        try:
            previous = json.loads((out / SETTING_FILE).read_text())
        except (OSError, ValueError):
            previous = None
        if isinstance(previous, dict):  # a setting recorded before protocols and --model: sst, SST's
            previous = {"model": None, "protocol": "sst", **previous}
        if previous != json.loads(json.dumps(setting)):
            differ = sorted(k for k in setting if not isinstance(previous, dict) or previous.get(k) != setting[k])
            what = f"differs in {', '.join(differ)}" if isinstance(previous, dict) else "is not recorded"
            raise ValueError(
                f"--out {out} holds the results of another evaluation (its setting {what}): "
                "choose another --out, or pass --overwrite to replace them"
            )
    from .files import first_missing

    made = first_missing(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(f"--out {out} is not writable ({first_line(error)})") from None
    return made


def _write_setting(out: Path, setting: dict) -> None:
    from .files import write_json_atomic

    write_json_atomic(out / SETTING_FILE, setting)


def _predict(args) -> int:
    import numpy as np

    from . import viz
    from .engine.checkpoint import load_checkpoint, model_from_checkpoint
    from .engine.train import resolve_device
    from .files import write_json_atomic
    from .predict import predict

    if len(args.mask) != len(args.support):
        raise ValueError(f"--mask: one mask per support image ({len(args.support)}), got {len(args.mask)}")
    class_ids = args.class_id or [None]
    if len(class_ids) not in (1, len(args.mask)):
        raise ValueError(
            f"--class-id: one label for every mask, or one per mask ({len(args.mask)}), got {len(class_ids)}"
        )
    if len(class_ids) == 1:
        class_ids = class_ids * len(args.mask)
    many = len(args.query) > 1 or args.query[0].is_dir()
    if many and args.figure:
        raise ValueError("--figure draws one prediction's figure: pass one --query file with it")
    queries = _query_files(args.query) if many else None
    state = load_checkpoint(args.checkpoint)
    _note_checkpoint(args, state)
    model = model_from_checkpoint(state, device=resolve_device(args.device, "--device"))
    size = _size(args.size, model.config.image_size)
    # Every image as a photo viewer shows it: EXIF orientation applied before the size checks below.
    query = None if many else read_photo(args.query[0], "--query", args.max_pixels)
    supports = [read_photo(path, "--support", args.max_pixels) for path in args.support]
    masks = [read_mask(path, class_id, args.max_pixels) for path, class_id in zip(args.mask, class_ids, strict=True)]
    for support, path, image, mask in zip(args.support, args.mask, supports, masks, strict=True):
        if mask.shape != image.shape[:2]:
            raise ValueError(_size_mismatch(support, image.shape[:2], path, mask.shape))
    if many:
        return _predict_many(args, state["path"], model, size, queries, supports, masks, class_ids)
    prediction = predict(model, query, supports, masks, image_size=size)
    # The folder holds this prediction only: an earlier one's files go first (a figure not drawn this time too).
    _clear_prediction(args.out)
    mask_path = viz.save_png(prediction * np.uint8(255), args.out / "mask.png")
    overlay_path = viz.save_png(viz.overlay(query, prediction), args.out / "overlay.png")
    print(f"mask: {mask_path}\noverlay: {overlay_path}")
    print(f"object pixels: {int(prediction.sum())} of {prediction.size} ({100 * prediction.mean():.1f}%)")
    if args.figure:
        figure = _prediction_figure(model, query, supports, masks, size, args.out)
        print(f"figure: {figure}")
    record = {
        "checkpoint": state["path"],
        "query": str(args.query[0]),
        "supports": [str(path) for path in args.support],
        "masks": [str(path) for path in args.mask],
        "class_ids": class_ids,
        "input_size": list(size),
        "files": [name for name in PREDICTION_FILES[:-1] if (args.out / name).exists()],
        "object_pixels": int(prediction.sum()),
        "code_version": _version(),
    }
    write_json_atomic(args.out / "prediction.json", record)
    return 0


def _predict_many(args, checkpoint, model, size, queries: list[Path], supports, masks, class_ids) -> int:
    """Several queries against one support set (:class:`sst_fast.Segmenter`): ``<stem>.png`` and
    ``<stem>-overlay.png`` per query and the index ``predictions.json``; unreadable queries are skipped."""
    import numpy as np

    from . import viz
    from .files import write_json_atomic
    from .predict import PhotoError
    from .segmenter import Segmenter

    segmenter = Segmenter(model, supports, masks, image_size=size)  # the support branch, once
    _clear_prediction(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "checkpoint": checkpoint,
        "supports": [str(path) for path in args.support],
        "masks": [str(path) for path in args.mask],
        "class_ids": class_ids,
        "input_size": list(size),
        # Every file this prediction may write, listed before any is: a later prediction replaces them all,
        # even those of one interrupted here.
        "files": [name for path in queries for name in _query_outputs(path)],
        "complete": False,
        "queries": [],
        "skipped": [],
        "code_version": _version(),
    }
    write_json_atomic(args.out / PREDICTIONS_INDEX, record)
    progress = _query_progress(len(queries), args.progress)
    for start in range(0, len(queries), args.batch_size):
        paths, images = [], []
        for path in queries[start : start + args.batch_size]:
            try:
                images.append(read_photo(path, "--query", args.max_pixels))
                paths.append(path)
            except (PhotoError, OSError) as error:
                _say(args.command, "warning", f"skipped: {first_line(error)}")
                record["skipped"].append({"query": str(path), "reason": first_line(error)})
        predictions = segmenter.predict_many(images, batch_size=args.batch_size)
        for path, image, prediction in zip(paths, images, predictions, strict=True):
            mask_name, overlay_name = _query_outputs(path)
            viz.save_png(prediction * np.uint8(255), args.out / mask_name)
            viz.save_png(viz.overlay(image, prediction), args.out / overlay_name)
            record["queries"].append(
                {
                    "query": str(path),
                    "mask": mask_name,
                    "overlay": overlay_name,
                    "object_pixels": int(prediction.sum()),
                    "pixels": int(prediction.size),
                }
            )
        progress(min(start + args.batch_size, len(queries)))
    record["complete"] = True
    write_json_atomic(args.out / PREDICTIONS_INDEX, record)
    progress(None)
    written, skipped = len(record["queries"]), len(record["skipped"])
    print(f"masks: {written} of {len(queries)} queries in {args.out} (index: {args.out / PREDICTIONS_INDEX})")
    if skipped:
        _say(args.command, "warning", f"{skipped} of {len(queries)} queries could not be read and were skipped")
        return EXIT_ERROR
    return 0


def _query_outputs(path: Path) -> tuple[str, str]:
    """The mask and overlay a query writes among several: ``<stem>.png`` and ``<stem>-overlay.png``."""
    return f"{path.stem}.png", f"{path.stem}-overlay.png"


def _query_files(paths: list[Path]) -> list[Path]:
    """``--query`` with several paths or a folder -> the query files, in order: each folder's images (by
    extension, sorted by name), each file as named (one that cannot be read is skipped when it is read).
    Two queries whose outputs would share a name are an error, before anything runs."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in QUERY_SUFFIXES)
            if not found:
                raise ValueError(f"--query: the folder {path} holds no image ({', '.join(QUERY_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    files = list(dict.fromkeys(files))  # a file named twice (itself and by its folder) is one query
    owners: dict[str, Path] = {}
    for file in files:
        for name in _query_outputs(file):
            if name in owners:
                raise ValueError(
                    f"--query: {owners[name]} and {file} would both write {name} in --out; rename one, or "
                    "predict them into separate folders"
                )
            owners[name] = file
    return files


def _clear_prediction(out: Path) -> None:
    """Remove an earlier prediction's files from ``out`` (of one query, or of several by their index): an
    output folder holds one prediction."""
    import json

    for name in PREDICTION_FILES:
        (out / name).unlink(missing_ok=True)
    index = out / PREDICTIONS_INDEX
    try:
        earlier = json.loads(index.read_text())
    except (OSError, ValueError):
        earlier = None
    names = earlier.get("files") if isinstance(earlier, dict) else None
    for name in names if isinstance(names, list) else []:
        if isinstance(name, str) and name.endswith(".png") and Path(name).name == name:  # only its own files
            (out / name).unlink(missing_ok=True)
    index.unlink(missing_ok=True)


def _query_progress(total: int, enabled: bool):
    """``update(done)`` per batch of queries, ``update(None)`` at the end: a bar on a terminal, else a line."""
    from .engine.runlog import is_terminal

    if not enabled:
        return lambda done: None
    if is_terminal(sys.stderr):
        from tqdm import tqdm

        bar = tqdm(total=total, desc="predict", unit="query", leave=False, dynamic_ncols=True)

        def update(done):
            if done is None:
                bar.close()
            else:
                bar.update(done - bar.n)

        return update

    def line(done):
        if done is not None:
            print(f"queries: {done} of {total}", flush=True)

    return line


def _size_mismatch(support: Path, shown: tuple[int, int], mask_path: Path, mask: tuple[int, int]) -> str:
    """Why a mask does not fit its support photo, with the photo's EXIF orientation when it turned the photo."""
    from .predict import stored_size_and_orientation

    text = f"--mask {mask_path} is {mask[1]}x{mask[0]} but its support image {support} is {shown[1]}x{shown[0]}"
    stored, orientation = stored_size_and_orientation(support)
    if orientation in (None, 1):
        return text
    text += (
        f" as shown: its EXIF orientation ({orientation}) turns it from {stored[1]}x{stored[0]} as stored, "
        "and masks are read as their own files are shown"
    )
    if tuple(mask) == tuple(stored):
        text += (
            "; the mask fits the photo as stored: save the mask in the photo's shown orientation "
            "(or save the photo without its EXIF orientation)"
        )
    return text


def _demo(args) -> int:
    from .engine.demo import demo

    demo(
        args.out,
        quick=args.quick,
        overrides=args.overrides,
        episodes=args.episodes,
        seeds=args.seeds,
        train_seeds=args.train_seeds,
        progress=args.progress,
        protocol=args.protocol,
    )
    return 0


def _ablation(args) -> int:
    from .engine.experiments import ablation
    from .engine.runconfig import load_run_config

    config = load_run_config(args.config, args.overrides)
    if args.study == "step":
        from .engine.study import step_study

        seeds = args.seeds or [0]
        if len(seeds) != 1:
            raise ValueError(f"--seeds: the step study evaluates on one seed's episodes, got {seeds}")
        if args.protocol != "sst":
            raise ValueError(f"--protocol: the step study draws its episodes under sst, got {args.protocol}")
        if args.folds is not None:
            raise ValueError("--folds: the step study runs on data.fold alone; --folds is for --study tables")
        step_study(
            config,
            args.out,
            train_seeds=args.train_seeds,
            episodes=args.episodes or 1000,
            seed=seeds[0],
            probes=args.probes,
            progress=args.progress,
        )
        return 0
    report = ablation(
        config,
        args.out,
        episodes=args.episodes,
        seeds=args.seeds,
        train_seeds=args.train_seeds,
        progress=args.progress,
        protocol=args.protocol,
        folds=args.folds,
    )
    print(report.read_text())
    return 0


def _benchmark(args) -> int:
    from .engine import distributed
    from .engine.benchmark import benchmark
    from .engine.runconfig import load_run_config

    config = load_run_config(args.config, args.overrides)
    report = benchmark(
        config,
        args.out,
        folds=args.folds,
        shots=args.shots,
        episodes=args.episodes,
        seeds=args.seeds,
        train_seeds=args.train_seeds,
        progress=args.progress,
        protocol=args.protocol,
        config_name=args.config,
    )
    if distributed.current().main:  # every rank has run it: rank 0 shows it
        print(report.read_text())
    return 0


def _compare(args) -> int:
    from .engine.compare import compare, markdown, write

    if args.a or args.b:
        if args.evaluations or not (args.a and args.b):
            raise ValueError("name A and B either as two EVAL arguments or with both --a and --b, not both ways")
        a, b = args.a, args.b
    elif len(args.evaluations) == 2:
        a, b = [args.evaluations[0]], [args.evaluations[1]]
    else:
        raise ValueError(f"compare needs two evaluations, A and B (or --a and --b), got {len(args.evaluations)}")
    comparison = compare(a, b, replicates=args.bootstrap, seed=args.seed)
    print(markdown(comparison), end="")
    write(comparison, args.out, args.markdown)
    return 0


def _data_check(args) -> int:
    from .data import open_dataset
    from .data.check import check_dataset
    from .engine.runconfig import load_run_config

    config = load_run_config(args.config, args.overrides)
    data = config.data
    dataset = open_dataset(data.dataset, data.root, **data.options)
    print(f"checking {data.dataset}" + (f" at {data.root}" if data.root else ""), flush=True)
    log = functools.partial(print, flush=True)
    report = check_dataset(dataset, shots=config.model.shots, read=args.read, workers=args.workers, log=log)
    print(report)
    return 0 if report.ok else EXIT_ERROR


def _info(_args) -> int:
    import platform

    import numpy
    import torch

    from . import ops
    from .protocol import code_version

    print(f"sst_fast   {code_version()}")
    print(f"python     {platform.python_version()} ({platform.platform()})")
    print(f"torch      {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"numpy      {numpy.__version__}")
    print(f"op backends built: {', '.join(ops.backends())}; in use: {ops.current_backend()}")
    print(f"kernels    {ops.library_status()}")
    print(f"cpu threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            print(
                f"cuda:{index}     {properties.name}, {properties.total_memory / 2**30:.0f} GiB, "
                f"sm_{properties.major}{properties.minor}"
            )
    else:
        print("device     cpu (no CUDA device)")
    return 0


# --- helpers ------------------------------------------------------------------------------------


def read_mask(path: Path, class_id: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """A support mask file -> uint8 [H, W] labels 0/1/255.

    With ``class_id``: pixels of that label are the object, 255 stays ignore, everything else is
    background (a VOC class-label PNG). Without: 0/1/255 masks are taken as they are; a mask with one
    non-zero value (0/255 or 0/N, as image editors save them) marks the object with that value.
    """
    import numpy as np

    array = _read_single_channel(path, max_pixels)
    if class_id is not None:
        labels = np.where(array == class_id, 1, np.where(array == 255, 255, 0)).astype(np.uint8)
        if not (labels == 1).any():
            raise ValueError(f"--mask {path} holds no pixel of --class-id {class_id} (values {_values(array)})")
        return labels
    values = set(np.unique(array).tolist())
    if values == {0}:
        raise ValueError(f"--mask {path} marks no object pixel (every pixel is 0)")
    if 1 in values and values <= {0, 1, 255}:
        return array.astype(np.uint8)
    if len(values - {0}) == 1:
        return (array != 0).astype(np.uint8)
    raise ValueError(f"--mask {path} holds several labels {_values(array)}: pass --class-id to pick the object")


def _read_single_channel(path: Path, max_pixels: int | None):
    import numpy as np

    from .predict import grey_to_uint8, open_photo

    with open_photo(path, "--mask", max_pixels) as image:
        if image.mode in ("RGB", "RGBA"):
            array = np.asarray(image.convert("RGB"))
            if not ((array[..., 0] == array[..., 1]) & (array[..., 1] == array[..., 2])).all():
                raise ValueError(f"--mask {path} is a colour image; a mask needs one channel (mode L or P)")
            return array[..., 0]
        if image.mode in ("L", "P", "1"):
            return np.asarray(image)
        if image.mode.startswith("I") or image.mode == "F":
            array = np.asarray(image)
            # Labels (0/1/255 or class ids) stored in a wide type stay labels; a 16-bit 0/65535 mask is 0/255.
            if array.size and 0 <= array.min() and array.max() <= 255:
                return array.astype(np.uint8)
            return grey_to_uint8(array)
        return np.asarray(image.convert("L"))


def _prediction_figure(model, query, supports, masks, size, out: Path) -> Path:
    """The tuning figure of one prediction, each panel at its photo's aspect ratio (the network saw them square)."""
    import torch

    from . import viz
    from .data.transforms import image_to_tensor, mask_to_tensor, normalize, resize_image, resize_mask

    parameter = next(model.parameters())
    query_batch = normalize(resize_image(image_to_tensor(query), size))[None]
    support_batch = torch.stack([normalize(resize_image(image_to_tensor(s), size)) for s in supports])[None]
    mask_batch = torch.stack([resize_mask(mask_to_tensor(m), size) for m in masks])[None]
    (explanation,) = viz.explain(
        model, query_batch.to(parameter.device), support_batch.to(parameter.device), mask_batch.to(parameter.device)
    )
    explanation = viz.at_aspect(explanation, query.shape[:2], [s.shape[:2] for s in supports])
    if explanation.shots > 1:
        return viz.figure_shots(explanation, out / "figure.png")
    return viz.figure_tuning([explanation], out / "figure.png")


def _default_run_dir(config) -> Path:
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.data.dataset}-fold{config.data.fold}-{config.model.shots}shot-{stamp}"


def _default_eval_dir(checkpoint: Path | None, setting: dict, args) -> Path:
    """One folder per evaluation setting, so that different settings never overwrite each other."""
    name = f"{setting['dataset']}-fold{setting['fold']}-{setting['shots']}shot"
    if setting["shots"] > 1 and setting["fusion"]:
        name += f"-{setting['fusion']}"
    if setting["protocol"] != "sst":
        name += f"-{setting['protocol']}"
    if setting["manifests"]:
        import hashlib

        name += "-manifest-" + hashlib.sha256("".join(setting["manifests"]).encode()).hexdigest()[:12]
    else:
        if setting["episodes"] is not None:  # None: every test image once
            name += f"-e{setting['episodes']}"
        name += "-s" + "-".join(str(s) for s in setting["seeds"])
    if args.size:
        name += "-{}x{}".format(*setting["input_size"])
    if setting["original_size"]:
        name += "-original-size"
    if setting["amp"] != "off":
        name += f"-{setting['amp']}"
    if setting["reference"]:
        name += "-reference"
    if setting["model"] is not None:  # a model of the user's: its own folder under eval/
        own = "".join(c if c.isalnum() or c in "-_." else "-" for c in setting["model"])
        if checkpoint is not None:
            own += f"-{Path(checkpoint).stem}"
        return DEFAULT_EVAL_DIR / own / name
    if checkpoint.parent.name == "checkpoints":  # inside a run folder: keep results with the run
        return checkpoint.parent.parent / "eval" / name
    return DEFAULT_EVAL_DIR / name


def _size(values: list[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    """``--size H [W]`` -> (H, W); the model's trained size when not given."""
    if not values:
        return default
    from .config import as_size

    return as_size(values[0] if len(values) == 1 else values, "--size")


def _count(text: str) -> int:
    """A positive count a run can mean: episodes, shots, a batch, steps (at most config.MAX_COUNT)."""
    from .config import MAX_COUNT

    value = _positive_int(text)
    if value > MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT:,}, got {text}")
    return value


def _workers(text: str) -> int:
    """Data loader processes: 0 (in the main process) up to runconfig.MAX_THREADS."""
    return _in_range(text, 0)


def _threads(text: str) -> int:
    """Reading threads: 1 up to runconfig.MAX_THREADS."""
    return _in_range(text, 1)


def _in_range(text: str, low: int) -> int:
    from .engine.runconfig import MAX_THREADS

    if not text.isdigit() or not low <= int(text) <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be an integer from {low} to {MAX_THREADS}, got {text!r}")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def _fold(text: str):
    return int(text) if text.isdigit() else text


def _values(array) -> str:
    import numpy as np

    values = np.unique(array)
    shown = ", ".join(str(v) for v in values[:8].tolist())
    return "{" + shown + (", ..." if len(values) > 8 else "") + "}"


def _progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
