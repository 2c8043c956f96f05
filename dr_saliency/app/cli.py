"""The ``dr-saliency`` command line: parse options, call the library, write files.

No maths lives here. Library errors (``ValueError``/``TypeError``, and ``OSError`` for files) become
one line on stderr and exit code 1; click's usage errors exit with 2; ``--debug`` shows the
traceback instead. TensorFlow is imported only by the commands that need it, so ``--help`` is fast.
"""

import os
import sys
import warnings

import click

from dr_saliency._version import __version__
from dr_saliency.core import errors
from dr_saliency.core import maps
from dr_saliency.explain import options as xo
from dr_saliency.fundus.datasets import LAYOUTS, SPLITS, select_records
from dr_saliency.fundus.synth import STAGE_MIXES
from dr_saliency.grader import config as train_config
from dr_saliency.refinement import erase as erase_lib
from dr_saliency.refinement import loop as loop_lib
from dr_saliency.jobs.demo import PROFILES as DEMO_PROFILES
from dr_saliency.jobs.explain import DEFAULT_TOP

def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click's own handling of it (a blank line and
    "Aborted.") to :func:`main`, which says "Interrupted." for every command alike."""


class _Option(click.Option):
    """A click option with hidden alias names and a default written as text.

    ``aliases``: old names that still parse but are not shown (``"--old"`` or, for an on/off
    flag, ``"--old/--old-off"``). A ``show_default`` string is shown as ``[default: text]``, the
    style of every other default (click would write ``[default: (text)]``).
    """

    def __init__(self, *args, aliases=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.aliases = [name for alias in aliases for name in alias.split("/")]
        for alias in aliases:
            on, _, off = alias.partition("/")
            self.opts.append(on)
            if off:
                self.secondary_opts.append(off)

    def get_help_record(self, ctx):
        kept = self.opts, self.secondary_opts, self.show_default
        text = self.show_default if isinstance(self.show_default, str) else None
        self.opts = [o for o in self.opts if o not in self.aliases]
        self.secondary_opts = [o for o in self.secondary_opts if o not in self.aliases]
        if text is not None:
            self.show_default = False
        try:
            record = super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts, self.show_default = kept
        if record is not None and text is not None:
            help_text, extra = record[1], ""
            if help_text.endswith("]") and "  [" in help_text:  # click's own [x>=1] etc.
                help_text, _, extra = help_text.rpartition("  [")
                extra = "; " + extra[:-1]
            record = (record[0], f"{help_text}  [default: {text}{extra}]".lstrip())
        return record


def _option(*names, **kwargs):
    """``click.option`` with :class:`_Option` (hidden aliases, defaults in one style)."""
    return click.option(*names, cls=_Option, **kwargs)


#: What each --profile name means, in train, demo and replicate alike.
PROFILES_HELP = (
    "quick: 256 px, a VGG-16 of 1/8 width trained from scratch for 6 epochs (minutes on a CPU); "
    "reference: 512 px, a quarter-width VGG-16 from scratch, 20 epochs (under an hour of "
    "training on 2 CPU cores); paper (train only): the paper's settings, 512 px, full width, "
    "ImageNet weights, 500 epochs, which no demo runs; smoke (demo and replicate only): the "
    "same steps on tiny data in about a minute, to check an installation (numbers meaningless).")

#: --seed of every command: numpy's seeding takes 0 .. 2**32 - 1.
SEED = click.IntRange(0, 2 ** 32 - 1)

WEIGHTS_HELP = '"imagenet", "none", or the path of a VGG-16 HDF5 weights file.'

_BOOTSTRAP_OPTION = _option("--bootstrap", "n_boot", default=1000, type=click.IntRange(min=1),
                            help="Bootstrap resamples of the 95% intervals.")

_BATCH_OPTION = _option("--batch-size", default=xo.DEFAULT_BATCH_SIZE, type=click.IntRange(min=1),
                        help="Images the network takes at once: bounds memory; the results do "
                             "not depend on it.")


class _Command(click.Command):
    """A command whose summary in ``dr-saliency --help`` is its docstring's whole first
    paragraph (click cuts it at about 45 characters)."""

    def get_short_help_str(self, limit=45):
        if self.short_help:
            return self.short_help
        return " ".join((self.help or "").split("\n\n")[0].split())


class _Group(click.Group):
    command_class = _Command

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


@click.group(cls=_Group,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dr-saliency")
@_option("--debug", is_flag=True, help="Show full tracebacks and library warnings.")
def cli(debug):
    """Weakly-supervised lesion localization in fundus images with iterative saliency map
    refinement (González-Gonzalo et al., MIDL 2018)."""
    # main() reads --debug itself (it must know before click parses); here it only keeps
    # library warnings as full Python warnings.
    if not debug:
        warnings.showwarning = _show_warning


@cli.command("model")
@_option("--input-size", default=512, type=int, help="Input side in pixels (square).")
@_option("--width", default=1.0, type=float, help="Multiplier on filters and units.")
@_option("--weights", default="none", help=WEIGHTS_HELP)
@_option("--dropout", default=0.5, type=float, help="Dropout after fc1 and fc2.")
@_option("--from", "source", type=click.Path(exists=True, dir_okay=False),
         help="Describe (and export) this grader's model file instead of building one.")
@_option("--export", "export_path", type=click.Path(dir_okay=False),
         help="Also write the full model as legacy HDF5 (.h5) here.")
@_option("--half", is_flag=True,
         help="Export the weights as float16: half the file, float32 arithmetic "
              "(the bundled grader's format).")
@_option("--overwrite", is_flag=True, help="Replace an existing --export file.")
def model_cmd(input_size, width, weights, dropout, source, export_path, half, overwrite):
    """Build the VGG-16 grader (or load one) and print its layers, output shapes and parameter
    count."""
    from dr_saliency.grader import model as model_lib
    if export_path and os.path.exists(export_path) and not overwrite:
        raise ValueError(f"Expected a new file to export to (pass --overwrite to replace it). "
                         f"Received: --export {export_path!r}, which exists")
    if half and not export_path:
        raise click.UsageError("--half applies to --export; give --export PATH")
    if source:
        built = [name for name in ("input_size", "width", "weights", "dropout")
                 if click.get_current_context().get_parameter_source(name).name != "DEFAULT"]
        if built:
            raise click.UsageError(f"--from loads a model; it takes no "
                                   f"{', '.join('--' + n.replace('_', '-') for n in built)}")
        net = model_lib.load_model(source)
    else:
        net = model_lib.build_model((input_size, input_size, 3), weights=_weights_arg(weights),
                                    dropout=dropout, width=width)
    _print_model(net, model_lib)
    if export_path:
        model_lib.export_model(net, export_path, half=half)
        click.echo(f"Wrote {export_path} ({os.path.getsize(export_path) / 2 ** 20:.1f} MiB)")


@cli.command("demo")
@_option("--out", "out_dir", default="demo_out", type=click.Path(file_okay=False),
         help="Folder for everything the demo makes; a rerun reuses finished steps.")
@_option("--profile", default="quick", type=click.Choice(list(DEMO_PROFILES)),
         help="Data and network size (2,000 synthetic images for quick and reference). "
              + PROFILES_HELP)
@_option("--seed", type=SEED, show_default="the profile's",
         help="Seeds both the synthetic data and the training (as each seed of replicate).")
def demo_cmd(out_dir, profile, seed):
    """The whole method end to end on synthetic data: synth -> train -> evaluate -> refine
    (referable test images) -> froc -> figures -> REPORT.md; minutes on a laptop with the quick
    profile (each step's time is in OUT/timings.json)."""
    from dr_saliency.jobs import demo
    report = demo.run_demo(out_dir, profile=profile, seed=seed, on_step=_on_step,
                           on_progress=_on_progress)
    click.echo(f"Report: {report}")


def _on_step(name, status, seconds, message):
    """Progress line of a demo-like step (``demo.run_steps``'s ``on_step``)."""
    if status == "done":
        click.echo(f"[{name}] done in {seconds:.0f} s: {message}")
    elif status == "start":
        click.echo(f"[{name}] ...")
    else:
        click.echo(f"[{name}] {message}")


def _on_progress(label, length):
    # Plain lines at every tenth, so that logs of a long run show where it is.
    state = {"done": 0, "shown": 0}

    def update(k=1):
        state["done"] += k
        tenth = int(10 * state["done"] / max(length, 1))
        if tenth > state["shown"]:
            state["shown"] = tenth
            click.echo(f"[{label}] {state['done']}/{length}")

    return update


@cli.command("replicate")
@_option("--seeds", default="1,2,3",
         help="Comma-separated seeds; each seeds both the synthetic data and the training.")
@_option("--out", "out_dir", default="replicate_out", type=click.Path(file_okay=False),
         help="Experiment folder (one sub-folder per seed); a rerun continues it.")
@_option("--profile", default="quick", type=click.Choice(list(DEMO_PROFILES)),
         help="The demo's profile, run once per seed. " + PROFILES_HELP)
@_BOOTSTRAP_OPTION
def replicate_cmd(seeds, out_dir, profile, n_boot):
    """The demo's pipeline once per seed, then S against s_0 across seeds.

    Per seed: synth -> train -> evaluate -> refine the referable test images; the stored maps
    are scored with our combination rule and the paper's (no re-refinement), s_0 and S on one
    scale. Writes OUT/REPLICATE.md (per-seed table, mean, sd and range), replicate.json and
    gains.png/pdf.
    """
    from dr_saliency.jobs import replicate
    seed_list = replicate.parse_seeds(seeds)

    def on_seed(seed, index, total):
        click.echo(f"== seed {seed} ({index + 1}/{total}) ==")

    replicate.run_replicate(out_dir, seed_list, profile=profile, n_boot=n_boot, on_seed=on_seed,
                            on_step=_on_step, on_progress=_on_progress)
    click.echo(f"Report: {os.path.join(out_dir, 'REPLICATE.md')}")


def _profile_default(field):
    """A train option's default per --profile, as ``show_default`` text:
    ``512 (paper, reference), 256 (quick)``."""
    by_value = {}
    for name, values in train_config.PROFILES.items():
        value = values.get(field, getattr(train_config.TrainConfig(), field))
        by_value.setdefault("none" if value is None else f"{value:g}" if isinstance(value, float)
                            else str(value), []).append(name)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{value} ({', '.join(names)})" for value, names in by_value.items())


LAYOUT_CHOICE = click.Choice(list(LAYOUTS))
SPLIT_CHOICE = click.Choice(list(SPLITS))
_PRECISION_OPTION = _option(
    "--precision", default="fp32", type=click.Choice(train_config.PRECISIONS),
    help="The network's arithmetic: fp32, or bf16 (bfloat16, about twice as fast on CPUs with "
         "AVX-512 BF16/AMX; docs/performance.md says what it changes).")


def _open(data, layout, skip_bad=False):
    """Open a dataset and print the problems its loader found (once each)."""
    from dr_saliency.fundus.datasets import open_dataset

    ds = open_dataset(data, layout=layout, skip_bad=skip_bad)
    for line in ds.warnings:
        click.echo(f"Warning: {line}", err=True)
    return ds


class _Bars:
    """The commands' ``on_progress`` (docs/contracts.md#progress): a click progress bar per phase
    of work, closed at the phase's last step, and any still open when the command ends (an
    error, Ctrl-C).

    Drawn on a terminal only: in a log file or a pipe a bar would be a stray label line.
    """

    def __init__(self):
        self.open = []

    def __call__(self, label, length):
        if not sys.stderr.isatty() or length <= 0:
            return lambda k=1: None
        bar = click.progressbar(length=length, label=label, file=sys.stderr, show_pos=True,
                                show_eta=True)
        bar.__enter__()
        self.open.append(bar)
        state = {"done": 0}

        def step(k=1):
            bar.update(k)
            state["done"] += k
            if state["done"] >= length and bar in self.open:
                self.open.remove(bar)
                bar.__exit__(None, None, None)

        return step

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self.open:
            self.open.pop().__exit__(*exc)


def _image_lines(quiet):
    """The commands' ``on_image(image_id, message)``: one line per image, none with --quiet."""
    def on_image(image_id, message):
        if not quiet:
            click.echo(f"{image_id}: {message}")

    return on_image


def _shard_options(func):
    """--shard, --workers and --cluster: one shard of a job, or all of them on an engine
    (refine, explain, evaluate; docs/training.md#one-machine-an-array-job-or-a-cluster)."""
    options = [
        _option("--shard", metavar="K/N",
                help="Only the images of shard K of N (1 <= K <= N, by a hash of each id): N "
                     "such commands (a scheduler's array job, one per GPU) cover every image "
                     "once; join their outputs with dr-saliency merge."),
        _option("--workers", "n_workers", type=click.IntRange(min=1),
                help="Run as this many shards on as many local worker processes, then merge "
                     "them into the output (needs the cluster extra: pip install -e "
                     "\".[cluster]\"); a rerun resumes."),
        _option("--cluster", metavar="ADDRESS",
                help="Run the shards on the Dask cluster whose scheduler is at ADDRESS "
                     "(tcp://host:8786): one shard per worker, or --workers shards; DATA, "
                     "MODEL and the output must be at the same paths on every worker."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _distribution(values):
    """``(shard or None, on the engine: bool)`` from the values of :func:`_shard_options` (the
    keys used are removed from ``values``)."""
    from dr_saliency.core.shards import parse_shard

    shard, workers, cluster = values.pop("shard"), values["n_workers"], values["cluster"]
    if shard is not None and (workers is not None or cluster is not None):
        raise click.UsageError("Give --shard K/N (one shard here) or --workers/--cluster (all "
                               "shards on an engine), not both.")
    if workers is None and cluster is None:
        return (None if shard is None else parse_shard(shard)), False
    from dr_saliency.jobs import engine

    if not engine.have_engine():
        raise ValueError(f"Expected Dask distributed for --workers/--cluster. Received: it is "
                         f"not installed (pip install -e \".[{engine.EXTRA}]\")")
    return None, True


def _shard_lines(quiet, what):
    """The engine's ``on_shard``: one line per finished shard, none with --quiet."""
    def on_shard(shard, summary, earlier):
        if not quiet:
            click.echo(f"shard {shard}: " + ("done by an earlier run" if earlier
                                               else what(summary)))

    return on_shard


def _fractions(ctx, param, value):
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated fractions, got {value!r}")
    if len(parts) != 3:
        raise click.BadParameter(f"expected three comma-separated fractions, got {value!r}")
    return parts


def _out_option(help_text):
    """OUT as a positional argument (the original form) or as --out, like every other command."""
    def decorate(func):
        func = _option("--out", "out_option", type=click.Path(file_okay=False),
                       help=help_text + " Also accepted as the last argument, OUT.")(func)
        return click.argument("out", required=False, type=click.Path(file_okay=False))(func)
    return decorate


def _one_out(out, out_option):
    """The output folder given either way (one of them, or both the same)."""
    if out is None and out_option is None:
        raise click.UsageError("Missing the output folder: give --out OUT (or OUT last).")
    if out is not None and out_option is not None and out != out_option:
        raise click.UsageError(f"Give the output folder once: OUT {out!r} and --out "
                               f"{out_option!r} differ.")
    return out if out is not None else out_option


@cli.command("synth")
@_out_option("Folder to write the dataset to (created; a rerun continues it).")
@_option("--n", "n", default=1000, type=int, help="Number of images.")
@_option("--size", default=512, type=int, help="Image side in pixels (>= 128).")
@_option("--seed", default=0, type=SEED, help="Same seed, same files.")
@_option("--stage-mix", "stages", default="balanced", type=click.Choice(list(STAGE_MIXES)),
         aliases=("--stages",),
         help="balanced: equal counts per stage; kaggle: Kaggle's stage frequencies.")
@_option("--fractions", "split", default="0.7,0.15,0.15", callback=_fractions,
         aliases=("--split",), help="train,val,test fractions (stratified by stage).")
@_option("--workers", type=click.IntRange(min=1), show_default="one per CPU core",
         help="Processes.")
@_option("--overwrite", is_flag=True, help="Regenerate a folder made with other parameters.")
@_option("--generator", default=3, show_default=True, type=click.IntRange(2, 3),
         help="Generator version: 3 (lesions as conspicuous relative to each other as in "
              "photographs) or 2 (earlier datasets, redrawn bit for bit). docs/synthetic.md.")
def synth_cmd(out, out_option, n, size, seed, stages, split, workers, overwrite, generator):
    """Write a synthetic fundus dataset with lesion masks to OUT (resumable)."""
    out = _one_out(out, out_option)
    from dr_saliency.fundus import synth
    with _Bars() as bars:
        labels = synth.write_dataset(out, n, size=size, seed=seed, stages=stages, split=split,
                                     workers=workers, on_progress=bars, overwrite=overwrite,
                                     generator=generator)
    click.echo(f"{n} synthetic images of {size}x{size} ({stages} stages, seed {seed}): {labels}")


@cli.command("preprocess")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@_out_option("Folder to write the preprocessed dataset to (folder layout).")
@_option("--size", default=512, type=int, help="Output side in pixels.")
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_option("--workers", type=click.IntRange(min=1), show_default="one per CPU core",
         help="Processes.")
@_option("--skip-bad", is_flag=True,
         help="Skip unreadable images and bad rows (listed at the end) instead of failing.")
@_option("--overwrite", is_flag=True, help="Redo every image of an existing OUT.")
def preprocess_cmd(src, out, out_option, size, layout, workers, skip_bad, overwrite):
    """Crop SRC's images to their field of view, pad square and resize (with masks and FOV)
    into the folder layout at OUT. Resumable: images already written are skipped."""
    out = _one_out(out, out_option)
    from dr_saliency.fundus import prepare as preprocess
    dataset = _open(src, layout, skip_bad)
    with _Bars() as bars:
        summary = preprocess.preprocess_dataset(dataset, out, size=size, workers=workers,
                                                skip_bad=skip_bad, on_progress=bars,
                                                overwrite=overwrite)
    for line in summary["warnings"][len(dataset.warnings):]:
        click.echo(f"Warning: {line}", err=True)
    for image_id, message in summary["skipped"]:
        click.echo(f"Skipped {image_id}: {message}", err=True)
    click.echo(f"{summary['written']} images written, {summary['already_done']} already done, "
               f"{len(summary['skipped'])} skipped, in {summary['seconds']:.0f} s: {out}")


@cli.command("train")
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_option("--out", "run_dir", type=click.Path(file_okay=False),
         help="Run folder to create (required unless --resume).")
@_option("--resume", "resume_dir", type=click.Path(file_okay=False),
         help="Continue the run in this folder from its last finished epoch.")
@_option("--profile", type=click.Choice(list(train_config.PROFILES)), default="paper",
         help="The training settings below; options given explicitly override them. "
              + PROFILES_HELP)
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_option("--input-size", type=int, show_default=_profile_default("input_size"),
         help="Input side in pixels.")
@_option("--width", type=float, show_default=_profile_default("width"),
         help="Filter multiplier.")
@_option("--weights", help=WEIGHTS_HELP, show_default=_profile_default("weights"))
@_option("--init-from", type=click.Path(exists=True, dir_okay=False),
         help="Warm start: a trained grader (model.h5) of the same input size and width "
              "whose weights start this run (replaces --weights).")
@_option("--epochs", type=int, show_default=_profile_default("epochs"),
         help="Epochs.")
@_option("--batch-size", type=click.IntRange(min=1), show_default=_profile_default("batch_size"),
         help="Images per optimiser step, over all replicas: a training setting (evaluate's, "
              "refine's and explain's --batch-size only bound memory).")
@_option("--optimizer", type=click.Choice(list(train_config.OPTIMIZERS)),
         show_default=_profile_default("optimizer"),
         help="sgd: Nesterov momentum 0.9 (the paper's).")
@_option("--lr", "learning_rate", type=float, show_default=_profile_default("learning_rate"),
         help="Peak learning rate.")
@_option("--schedule", type=click.Choice(list(train_config.SCHEDULES)),
         show_default=_profile_default("schedule"), help="Learning-rate schedule after warm-up.")
@_option("--warmup-epochs", type=float, show_default=_profile_default("warmup_epochs"),
         help="Linear learning-rate warm-up.")
@_option("--clipnorm", type=float, show_default=_profile_default("clipnorm"),
         help="Gradient norm clipping.")
@_option("--val-fraction", type=float, default=0.15,
         help="Stratified validation fraction when DATA has no split column.")
@_option("--augment/--no-augment", default=True, help="Random flips, rotation, scale, colour.")
@_option("--balance/--no-balance", default=True, help="Resample stages equally per epoch.")
@_option("--seed", type=SEED, default=0,
         help="Seeds the initial weights, the validation split, shuffling and augmentation.")
@_option("--strategy", type=click.Choice(list(train_config.STRATEGIES)),
         default="default", help="TensorFlow distribution strategy (see docs/training.md).")
@_option("--steps-per-epoch", type=int, show_default="training images / batch size",
         help="Optimiser steps per epoch.")
@_PRECISION_OPTION
@_option("--skip-bad", is_flag=True, help="Skip unreadable images (listed at the end).")
@_option("--force", is_flag=True,
         help="With --resume: continue on a dataset other than the run's (its fingerprint "
              "differs).")
@_option("--timeout", type=click.FloatRange(min=0, min_open=True),
         default=train_config.CLUSTER_TIMEOUT,
         help="--strategy multiworker: seconds to wait for the other workers of TF_CONFIG "
              "to start before giving up (also with --resume).")
def train_cmd(data, run_dir, resume_dir, profile, layout, skip_bad, force, timeout, **options):
    """Train the VGG-16 grader on DATA (any layout; normally a preprocessed folder)."""
    if bool(run_dir) == bool(resume_dir):
        raise click.UsageError("Give exactly one of --out RUN_DIR (new run) or --resume RUN_DIR.")
    if resume_dir:
        # A resumed run keeps the settings of its config.json; an option given with --resume
        # would be ignored, so it is refused instead.
        ctx = click.get_current_context()
        given = [f"--{name.replace('_', '-')}" for name in ["profile", *options]
                 if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")]
        if given:
            raise click.UsageError(f"--resume continues the run with its own settings "
                                   f"(config.json); it takes no {', '.join(given)}")
    from dr_saliency.grader import train as train_lib
    values = dict(train_config.PROFILES[profile])
    values.update({k: v for k, v in options.items() if v is not None})
    if "weights" in values:
        values["weights"] = _weights_arg(values["weights"])
    config = train_config.TrainConfig(**values)
    dataset = _open(data, layout, skip_bad)
    with _Bars() as bars:
        summary = train_lib.train(dataset, run_dir or resume_dir, config,
                                  resume=bool(resume_dir), skip_bad=skip_bad, force=force,
                                  data_path=os.path.abspath(data), on_progress=bars,
                                  timeout=timeout)
    for path, message in summary["skipped"]:
        click.echo(f"Skipped {path}: {message}", err=True)
    if not summary["chief"]:
        click.echo(f"Trained on {summary['n_train']} images as {summary['worker']} of the "
                   f"cluster; {summary['seconds']:.0f} s. The chief validates and writes the "
                   f"model: {summary['model_path']}")
        return
    click.echo(f"Trained on {summary['n_train']} images, validated on {summary['n_val']}; "
               f"best validation kappa {summary['best_kappa']} at epoch {summary['best_epoch']}; "
               f"{summary['seconds']:.0f} s. Model: {summary['model_path']}")


@cli.command("evaluate")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
         help="Output folder: evaluation.json, predictions.csv, the confusion matrix and ROC "
         "figures (with --shard: predictions.csv and shard.json).")
@_option("--split", default="test", type=SPLIT_CHOICE, help="Which images of DATA to grade.")
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_BATCH_OPTION
@_BOOTSTRAP_OPTION
@_PRECISION_OPTION
@_option("--skip-bad", is_flag=True,
         help="Skip unreadable images and images not of the model's input size (listed "
              "at the end) instead of failing.")
@_shard_options
def evaluate_cmd(model_path, data, out_dir, split, layout, batch_size, n_boot, precision,
                 skip_bad, **values):
    """Grade DATA with MODEL (a model.h5): kappa, AUC with 95% CI, confusion matrix, ROC."""
    from dr_saliency.grader import evaluate as evaluate_lib
    from dr_saliency.grader import model as model_lib
    from dr_saliency.jobs import sharded

    shard, distributed = _distribution(values)
    dataset = _open(data, layout, skip_bad)
    params = sharded.evaluation_params(model_path, dataset)
    with _Bars() as bars:
        if distributed:
            report = sharded.evaluate_sharded(
                model_path, data, out_dir, workers=values["n_workers"],
                address=values["cluster"], layout=layout, split=split, batch_size=batch_size,
                n_boot=n_boot, skip_bad=skip_bad, precision=precision, on_progress=bars,
                on_shard=_shard_lines(False, lambda s: f"{s['n_images']} images graded"))
        else:
            net = model_lib.with_precision(model_lib.load_model(model_path), precision)
            report = evaluate_lib.evaluate(net, dataset, out_dir, split=split,
                                           batch_size=batch_size, n_boot=n_boot,
                                           skip_bad=skip_bad, on_progress=bars, shard=shard,
                                           params=params)
    for entry in report["skipped"]:
        click.echo(f"Skipped {entry['image']}: {entry['reason']}", err=True)
    skipped = f", {len(report['skipped'])} skipped" if report["skipped"] else ""
    if shard is not None:
        click.echo(f"{report['n_images']} images graded ({split}, shard {shard}{skipped}). "
                   f"Wrote {os.path.join(out_dir, evaluate_lib.SHARD_FILE)}; join the "
                   f"{shard.count} shards with: dr-saliency merge OUT FOLDER...")
        return
    m = report["metrics"]
    click.echo(f"{report['n_images']} images ({split}{skipped}): quadratic kappa {m['kappa']:.3f} "
               f"(95% CI {report['kappa_ci'][0]:.3f}-{report['kappa_ci'][1]:.3f}), referable AUC "
               f"{m['auc']:.3f} (95% CI {report['auc_ci'][0]:.3f}-{report['auc_ci'][1]:.3f}), "
               f"MSE {m['mse']:.3f}, accuracy {m['accuracy']:.3f}. Wrote {out_dir}/evaluation.json")


def _ids(value):
    """--ids: comma-separated ids, or @FILE with one id per line."""
    if value is None:
        return None
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    return [v.strip() for v in value.split(",") if v.strip()]


def _refine_options(func):
    """The options of the saliency method, the loop and the erase step (refine and explain)."""
    options = [
        _option("--method", default=xo.DEFAULT_METHOD, type=click.Choice(xo.METHODS),
                help="Saliency method (guided: the paper's guided back-propagation)."),
        _option("--sign", default=xo.DEFAULT_SIGN, type=click.Choice(xo.SIGNS),
                help="Which part of the gradient is evidence (negative: what lowers the "
                     "grade)."),
        _option("--reduce", default=xo.DEFAULT_REDUCE, type=click.Choice(xo.REDUCTIONS),
                help="How the three colour channels become one map."),
        _option("--target", default=xo.DEFAULT_TARGET, type=click.Choice(xo.TARGETS),
                help="Differentiate the output, or the negated output (the other reading "
                     "of 'negative gradients')."),
        _option("--ig-steps", default=xo.DEFAULT_IG_STEPS, type=int,
                help="Integrated gradients: path intervals."),
        _option("--gradcam-layer", default=xo.DEFAULT_GRADCAM_LAYER, help="Grad-CAM layer."),
        _option("--max-iterations", default=loop_lib.DEFAULT_MAX_ITERATIONS, type=int,
                help="Cap on inpaintings per image; 0 gives plain s_0 maps."),
        _option("--stop-at", default=loop_lib.DEFAULT_STOP_AT, type=click.IntRange(0, 3),
                show_default=True,
                help="Stop once the image is graded (prediction rounded to a stage) at or "
                     "below this; 1: no longer referable."),
        _option("--decay", default=maps.DEFAULT_DECAY, type=float,
                help="Weight decay**i of map s_i in the final map S."),
        _option("--combine", default=maps.DEFAULT_COMBINE,
                type=click.Choice(maps.COMBINE_MODES),
                help="mean: the paper's weighted mean; max; masked: each map counts fully "
                     "only inside its own inpainted mask."),
        _option("--normalize", default=maps.DEFAULT_NORMALIZE,
                type=click.Choice(maps.NORMALIZE_MODES),
                help="Scale of the maps in S (and in scoring): map: each by its own robust "
                     "maximum; image: all by s_0's; none: raw gradients."),
        _option("--binarize", "binarize_rule", default=erase_lib.DEFAULT_RULE,
                type=click.Choice(erase_lib.BINARIZE_RULES), help="Rule that makes a mask."),
        _option("--level", "binarize_level", type=float,
                help="top_fraction: fraction of FOV pixels; fraction_of_max: fraction of "
                     "the maximum; otsu takes none.",
                show_default="; ".join(f"{rule} {level:g}" for rule, level
                                       in erase_lib.DEFAULT_LEVELS.items()
                                       if level is not None)),
        _option("--smooth-sigma", default=erase_lib.DEFAULT_SMOOTH_SIGMA, type=float,
                help="Gaussian smoothing of the map before binarising (px); the "
                     "candidates' own is --cand-sigma."),
        _option("--dilation", default=erase_lib.DEFAULT_DILATION, type=int,
                help="Dilation of the mask (px)."),
        _option("--min-component-size", default=erase_lib.DEFAULT_MIN_COMPONENT_SIZE,
                type=int, help="Drop mask components smaller than this (px)."),
        _option("--inpaint", "inpaint_method", default=erase_lib.DEFAULT_INPAINT_METHOD,
                type=click.Choice(list(erase_lib.INPAINT_METHODS)),
                help="ns: Navier-Stokes (the paper's); telea."),
        _option("--inpaint-radius", default=erase_lib.DEFAULT_INPAINT_RADIUS, type=int,
                help="How far around each masked pixel the inpainting draws from (px)."),
        _option("--inpaint-inside-fov/--inpaint-whole-image", "inpaint_inside_fov",
                default=True,
                help="Fill masked pixels from inside the field of view only (the black "
                     "surround never bleeds in at the rim)."),
        _BATCH_OPTION,
        _PRECISION_OPTION,
        _option("--skip-bad", is_flag=True,
                help="Report and skip bad images instead of failing."),
        _option("--quiet", is_flag=True, help="No line per image."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_REFINE_KEYS = ("method", "sign", "reduce", "target", "ig_steps", "gradcam_layer",
                "max_iterations", "stop_at", "decay", "combine", "normalize", "binarize_rule",
                "binarize_level", "smooth_sigma", "dilation", "min_component_size",
                "inpaint_method", "inpaint_radius", "inpaint_inside_fov")


def _refine_settings(values):
    """(Explanation, RefineConfig, Eraser) from the values of :func:`_refine_options`; the
    keys used are removed from ``values``."""
    v = {k: values.pop(k) for k in _REFINE_KEYS}
    explanation = xo.Explanation(method=v["method"], sign=v["sign"], reduce=v["reduce"],
                                 target=v["target"], steps=v["ig_steps"],
                                 layer=v["gradcam_layer"])
    config = loop_lib.RefineConfig(
        max_iterations=v["max_iterations"], stop_at=v["stop_at"],
        combination=maps.Combination(decay=v["decay"], combine=v["combine"],
                                     normalize=v["normalize"]))
    erase = erase_lib.Eraser(rule=v["binarize_rule"], level=v["binarize_level"],
                             smooth_sigma=v["smooth_sigma"], dilation=v["dilation"],
                             min_component_size=v["min_component_size"],
                             method=v["inpaint_method"], radius=v["inpaint_radius"],
                             inside_fov=v["inpaint_inside_fov"])
    return explanation, config, erase


@cli.command("refine")
@click.argument("model_path", metavar="MODEL", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_option("--out", required=True, type=click.Path(dir_okay=False),
         help="Result file (.h5); an existing one is resumed (same parameters only).")
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_option("--split", default="all", type=SPLIT_CHOICE, help="Which images of DATA to refine.")
@_option("--ids", show_default="every image of --split",
         help="Only these ids: comma-separated, or @FILE with one per line.")
@_option("--only-referable", is_flag=True,
         help="Store only images graded above --stop-at, i.e. referable (the paper "
              "refines these).")
@_option("--keep-images", is_flag=True, help="Also store the inpainted images I_1..I_n.")
@_refine_options
@_shard_options
def refine_cmd(model_path, data, out, layout, split, ids, only_referable, keep_images,
               **values):
    """Iterative saliency map refinement of DATA's images with MODEL, into an HDF5 result file.

    Each image: saliency map, binarise, inpaint, grade again, until the grade is at or below
    --stop-at or --max-iterations; the final map S combines the maps. Rerunning the same
    command skips images already complete in --out.
    """
    from dr_saliency.jobs import refine as refine_job
    from dr_saliency.jobs import sharded

    explanation, config, erase = _refine_settings(values)
    quiet, skip_bad = values.pop("quiet"), values.pop("skip_bad")
    shard, distributed = _distribution(values)
    dataset = _open(data, layout, skip_bad)
    records = select_records(dataset, split=split, ids=_ids(ids))
    settings = dict(explanation=explanation, config=config, erase=erase,
                    batch_size=values["batch_size"], keep_images=keep_images,
                    only_referable=only_referable, skip_bad=skip_bad,
                    precision=values["precision"])
    with _Bars() as bars:
        if distributed:
            summary = sharded.refine_sharded(
                model_path, data, out, workers=values["n_workers"], address=values["cluster"],
                layout=layout, split=split, ids=_ids(ids), on_progress=bars,
                on_shard=_shard_lines(quiet, lambda s: f"{s['written']} images refined, "
                                                       f"{s['already_done']} already done"),
                **settings)
        else:
            summary = refine_job.refine_run(model_path, records, out, on_image=_image_lines(quiet),
                                            on_progress=bars, dataset=dataset, shard=shard,
                                            **settings)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["stop_reasons"].items()))
    how = (f" (shard {shard})" if shard is not None
           else f" ({summary['shards']} shards merged)" if distributed else "")
    click.echo(f"{summary['written']} images refined ({reasons or 'none'}), "
               f"{summary['already_done']} already done, {summary['not_referable']} not referable, "
               f"{len(summary['skipped'])} skipped, in {summary['seconds']:.0f} s{how}: {out}")


def _candidate_options(func):
    """The options that turn a map into lesion candidates (froc and explain); each is named
    --cand-*, the names they had before still parse."""
    from dr_saliency.lesions.candidates import CANDIDATE_METHODS
    from dr_saliency.lesions.localize import CandidateOptions

    c = CandidateOptions()
    options = [
        _option("--cand-sigma", default=c.sigma, type=float,
                help="Smoothing of the map before peak finding (px)."),
        _option("--cand-min-distance", "min_distance", default=c.min_distance, type=int,
                aliases=("--min-distance",), help="Minimum distance between candidates (px)."),
        _option("--cand-max", "max_candidates", default=c.max_candidates, type=int,
                aliases=("--max-candidates",), help="Candidates per image (highest scores)."),
        _option("--cand-border", "border", default=c.border, type=int, aliases=("--border",),
                help="No candidates within this distance of the FOV edge (px)."),
        _option("--cand-exclude-disc/--cand-keep-disc", "exclude_disc", default=c.exclude_disc,
                aliases=("--exclude-disc/--keep-disc",),
                help="No candidates on the optic disc (the dataset's mask or an estimate)."),
        _option("--cand-method", default=c.method, type=click.Choice(CANDIDATE_METHODS),
                help="peaks: local maxima of the smoothed map; components: centroids of "
                     "its regions above --cand-level of the image's maximum."),
        _option("--cand-level", default=c.level, type=float,
                help="components: region threshold, fraction of the image's maximum."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _candidate_config(values):
    from dr_saliency.lesions.localize import CandidateOptions

    return CandidateOptions(sigma=values.pop("cand_sigma"), min_distance=values.pop("min_distance"),
                            max_candidates=values.pop("max_candidates"),
                            border=values.pop("border"), exclude_disc=values.pop("exclude_disc"),
                            method=values.pop("cand_method"), level=values.pop("cand_level"))


@cli.command("explain")
@click.argument("inputs", metavar="IMAGE_OR_FOLDER...", nargs=-1, required=True,
                type=click.Path(exists=True))
@_option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
         help="Output folder: results.h5, figures/, explain.csv and explain.json; a rerun "
              "continues it (same settings only), other photographs are added to it.")
@_option("--model", "model_path", type=click.Path(exists=True, dir_okay=False),
         show_default="the bundled grader, trained on synthetic images only "
                       "(data/README.md)",
         help="A grader's model file (.h5).")
@_option("--top", default=DEFAULT_TOP, show_default=True, type=click.IntRange(min=1),
         help="Candidate lesions listed per photograph.")
@_refine_options
@_candidate_options
@_shard_options
def explain_cmd(inputs, out_dir, model_path, top, **values):
    """Grade and explain your own fundus photographs (any size; JPEG, PNG, TIFF, ...).

    Each photograph: field of view, square crop and resize to the model's input, the refinement
    loop, then s_0, S and the top candidate lesions mapped back onto the photograph. Writes a
    figure per photograph and one table for all of them.
    """
    from dr_saliency.jobs import explain as photos
    from dr_saliency.jobs import sharded
    from dr_saliency.fundus.photos import printable

    explanation, config, erase = _refine_settings(values)
    quiet = values.pop("quiet")
    shard, distributed = _distribution(values)
    settings = dict(model_path=model_path, explanation=explanation, config=config, erase=erase,
                    batch_size=values["batch_size"], top=top, skip_bad=values["skip_bad"],
                    options=_candidate_config(values), precision=values["precision"])
    with _Bars() as bars:
        if distributed:
            summary = sharded.explain_sharded(
                list(inputs), out_dir, workers=values["n_workers"], address=values["cluster"],
                on_progress=bars, **settings,
                on_shard=_shard_lines(quiet, lambda s: f"{s['rows']} photographs explained"))
        else:
            summary = photos.explain_photos(list(inputs), out_dir, on_image=_image_lines(quiet),
                                            on_progress=bars, shard=shard, **settings)
    if summary["ignored"]:
        names = [printable(os.path.basename(p)) for p in summary["ignored"][:5]]
        click.echo(f"Ignored {len(summary['ignored'])} file(s) that are not images by their "
                   f"suffix: {', '.join(names)}"
                   + (" ..." if len(summary["ignored"]) > 5 else ""), err=True)
    for path, reason in summary["skipped"]:
        click.echo(f"Skipped {path}: {reason}", err=True)
    again = f", {summary['replaced']} of them again: their file changed" * bool(summary["replaced"])
    earlier = f", {summary['earlier']} from earlier runs" * bool(summary.get("earlier"))
    how = (f" (shard {shard})" if shard is not None
           else f" ({summary['shards']} shards merged)" if distributed else "")
    click.echo(f"{len(summary['rows'])} photographs explained ({summary['written']} refined now"
               f"{again}, {summary['already_done']} already done{earlier}), "
               f"{len(summary['skipped'])} skipped, in {summary['seconds']:.0f} s{how}: "
               f"{printable(summary['paths'][0])}")


def _stages(value):
    """--stages: comma-separated DR stages 0-4, each once (in the order given)."""
    try:
        stages = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated DR stages 0-4, got {value!r}")
    wrong = [s for s in stages if not 0 <= s <= 4]
    if wrong:
        raise click.BadParameter(f"expected DR stages 0-4, got {', '.join(map(str, wrong))} "
                                 f"in {value!r}")
    return tuple(dict.fromkeys(stages))


@cli.command("froc")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
         help="Output folder: metrics.json, curves.csv and the FROC figures (PNG and PDF).")
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_option("--allow-partial", is_flag=True,
         help="Evaluate the images present in both RESULTS and DATA when ids differ, and "
              "the results of a refine run that did not finish.")
@_option("--force", is_flag=True,
         help="Use DATA even though it differs from the dataset RESULTS was made from.")
@_option("--stages", default="2,3,4", callback=lambda c, p, v: _stages(v),
         help="DR stages reported separately.")
@_option("--tolerance", default=0.0, type=float,
         help="A candidate within this distance of a lesion hits it (px).")
@_BOOTSTRAP_OPTION
@_option("--combine", type=click.Choice(maps.COMBINE_MODES),
         show_default="the run's", help="Recombine S from the stored maps this way.")
@_option("--decay", type=float, show_default="the run's",
         help="Recombine S with this decay.")
@_option("--normalize", type=click.Choice(maps.NORMALIZE_MODES),
         show_default="the run's", help="Scale of s_0 and S, the same for both.")
@_option("--lesions", is_flag=True,
         help="Also say which lesions s_0 and S find at --lesions-fp, which S keeps, loses "
              "and gains, and at which iteration each was inpainted: lesions.csv (one row "
              "per lesion), lesion_fate.csv and lesion_fate.md.")
@_option("--lesions-fp", type=float, show_default="10, the upper end of AS10",
         help="False positives per image of --lesions' operating point, on each group's "
              "own FROC curve.")
@_candidate_options
def froc_cmd(results, data, out_dir, layout, allow_partial, force, stages, tolerance, n_boot,
             combine, decay, normalize, lesions, lesions_fp, **candidate_values):
    """Lesion-level FROC of s_0 and S against DATA's lesion annotations.

    s_0 and S are both recomputed from the stored maps on one scale (--normalize) and pass
    through the same candidate settings. Writes metrics.json (curves, 7-point score, average sensitivity up to 10 FP/image, bootstrap
    95% intervals, paired S - s_0 gains), curves.csv and the FROC figures (PNG and PDF); with
    --lesions, the fate of every lesion too.
    """
    from dr_saliency.jobs import froc as froc_job
    from dr_saliency.lesions import localize, reports
    from dr_saliency.lesions.froc import DEFAULT_MAX_FP

    if lesions_fp is not None and not lesions:
        raise click.UsageError("--lesions-fp applies to --lesions; give --lesions")
    lesions_fp = DEFAULT_MAX_FP if lesions_fp is None else lesions_fp
    records, notes = localize.records_for(results, _open(data, layout),
                                          allow_partial=allow_partial, force=force)
    for note in notes:
        click.echo(f"Note: {note}", err=True)
    present = {r.grade for r in records}
    for stage in stages:
        if stage not in present:
            click.echo(f"Note: no image of stage {stage} among the {len(records)} evaluated: "
                       f"stage {stage} gets no FROC of its own", err=True)
    with _Bars() as bars:
        report, paths = froc_job.froc_run(
            results, records, out_dir, options=_candidate_config(candidate_values),
            stages=stages, tolerance=tolerance, n_boot=n_boot, decay=decay, combine=combine,
            normalize=normalize, allow_partial=allow_partial, force=force, notes=notes,
            params={"data": os.path.abspath(data)}, on_progress=bars,
            lesions_fp=lesions_fp if lesions else None)
    click.echo(reports.summary_table(report))
    if lesions:
        click.echo(f"\nLesions found within {lesions_fp:g} FP/image (each group's own curve):")
        click.echo(reports.fate_table(report))
    click.echo(f"Wrote {', '.join(paths)}")


@cli.command("merge")
@click.argument("out", type=click.Path())
@click.argument("inputs", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(exists=True))
@_option("--overwrite", is_flag=True, help="Replace an earlier merge in OUT.")
def merge_cmd(out, inputs, overwrite):
    """Join the outputs of the N shards of one refine, explain or evaluate (--shard K/N) into OUT.

    INPUT... are all result files (refine: OUT is a result file), all explain folders or all
    evaluate folders (OUT is a folder). Refused, in one line: shards of several runs or splits,
    a shard given twice, shards missing (named), other models, data or settings, an image in
    two shards. The merged output is what one process writes: froc and figures give the same
    numbers.
    """
    from dr_saliency.jobs import sharded

    with _Bars() as bars:
        merged = sharded.merge_outputs(out, list(inputs), overwrite=overwrite, on_progress=bars)
    what = {"results": "images", "explain": "photographs", "evaluation": "images"}[merged["kind"]]
    click.echo(f"Merged {merged['shards']} shards: {merged['images']} {what} in {out}")


@cli.command("figures")
@click.argument("results", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=click.Path(exists=True, file_okay=False))
@_option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
         help="Output folder for the figures.")
@_option("--layout", type=LAYOUT_CHOICE, show_default="detect", help="Dataset layout.")
@_option("--ids", show_default="picked where S finds most more lesions than s_0",
         help="Images to show: comma-separated, or @FILE with one per line.")
@_option("--rows", "n_rows", default=4, type=int, help="Images when picking automatically.")
@_option("--format", "formats", default="png,pdf",
         help="Comma-separated figure formats.")
@_option("--force", is_flag=True,
         help="Use DATA even though it differs from the dataset RESULTS was made from.")
def figures_cmd(results, data, out_dir, layout, ids, n_rows, formats, force):
    """Figure-1 panels (image, s_0, S) and per-iteration strips (I_i, s_i, mask_i, p_i)."""
    from dr_saliency.lesions import panels

    written = panels.write_figures(results, _open(data, layout), out_dir, ids=_ids(ids),
                                    n_rows=n_rows, formats=tuple(formats.split(",")),
                                    force=force)
    click.echo(f"Wrote {len(written) - 1} figure files to {out_dir}")


def _weights_arg(value):
    return None if value is None or value.lower() == "none" else value


def _print_model(net, model_lib):
    rows = model_lib.summarize(net)
    name_w = max(len(r["name"]) for r in rows)
    type_w = max(len(r["type"]) for r in rows)
    click.echo(f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output shape':<16}  {'params':>12}")
    for r in rows:
        shape = "x".join(str(v) for v in r["output_shape"]) if r["output_shape"] else "-"
        click.echo(f"{r['name']:<{name_w}}  {r['type']:<{type_w}}  {shape:<16}  {r['params']:>12,}")
    click.echo(f"Total parameters: {net.count_params():,}")


def _advice(exc, options=None):
    """What the command line's own flags can do about a library error (None: nothing).

    ``options``: the flags of the command that failed (None: unknown, every advice given);
    advice to use a flag the command does not have is left out.
    """
    def use(flag, text):
        return text if options is None or flag in options else None

    if isinstance(exc, errors.ImageSizeError):
        return f"preprocess the data to that size first: dr-saliency preprocess --size {exc.size}"
    if isinstance(exc, errors.BadImageError):
        return use("--skip-bad", "use --skip-bad to skip bad images")
    if isinstance(exc, errors.EmptySplitError):
        # With split "all" already, no flag helps: the images lack what the command needs.
        return None if exc.split == "all" else use("--split", "use --split all for every image")
    if isinstance(exc, errors.PartialResultsError):
        return use("--allow-partial", "use --allow-partial to evaluate the images in both")
    if isinstance(exc, errors.FolderInUseError):
        return "choose another output folder" + (", or pass --overwrite" * exc.can_overwrite)
    if isinstance(exc, errors.RunExistsError):
        return "continue it with --resume, or choose another --out"
    if isinstance(exc, errors.NoValidationError):
        return "give the data a 'val' split, or set --val-fraction"
    if isinstance(exc, errors.ProvenanceError) and "data" in exc.differences:
        return use("--force", "pass --force to use it anyway")
    if isinstance(exc, errors.OutOfMemoryError):
        return f"try a smaller --batch-size, e.g. {exc.suggested}"
    if isinstance(exc, errors.ClusterTimeoutError):
        return "start the same command there with its TF_CONFIG, or give --timeout more seconds"
    return None


def _command_options(args):
    """The flags of the command named in ``args`` (None when no command is named)."""
    # The command is the first word that is not an option: the group's options take no value.
    name = next((a for a in args if not a.startswith("-")), None)
    command = cli.commands.get(name) if name else None
    if command is None:
        return None
    return {opt for p in command.params if isinstance(p, click.Option)
            for opt in (*p.opts, *p.secondary_opts)}


def _as_options(message, args):
    """A library message with each ``keyword=True`` the command has an option for written as
    that option (``skip_bad=True`` -> ``--skip-bad``).

    Library messages name their keyword, as Python callers need; on the command line only the
    option can be typed. A keyword the command has no option for (and a value shown after
    ``Received:``) is left as it is.
    """
    import re

    options = _command_options(args)
    if options is None:
        return message

    def option(match):
        flag = "--" + match.group(1).replace("_", "-")
        return flag if flag in options else match.group(0)

    return re.sub(r"(?<!Received: )\b([a-z][a-z0-9_]*)=True\b", option, message)


def main(args=None):
    """Entry point of the ``dr-saliency`` console script."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or bool(os.environ.get("DR_SALIENCY_DEBUG"))
    previous = os.environ.get("DR_SALIENCY_DEBUG")
    if debug:
        # Read by dr_saliency.core._tf: show TensorFlow's start-up notices too.
        os.environ["DR_SALIENCY_DEBUG"] = "1"
    try:
        cli.main(args=args, prog_name="dr-saliency", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (_Interrupted, KeyboardInterrupt, click.exceptions.Abort):
        # Whatever was written stays valid: every command resumes where it stopped.
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        if debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = _as_options(message, args)
        advice = _advice(exc, _command_options(args))
        click.echo(f"Error: {message}" + (f" ({advice})" if advice else ""), err=True)
        sys.exit(1)
    finally:
        # main() may run inside a longer-lived process (tests, notebooks): leave no trace.
        if previous is None:
            os.environ.pop("DR_SALIENCY_DEBUG", None)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
