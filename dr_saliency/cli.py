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

_STATE = {"debug": False}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="dr-saliency")
@click.option("--debug", is_flag=True, help="Show full tracebacks and library warnings.")
def cli(debug):
    """Weakly-supervised lesion localization in fundus images with iterative saliency map
    refinement (González-Gonzalo et al., MIDL 2018)."""
    _STATE["debug"] = debug
    if not debug:
        warnings.showwarning = _show_warning


@cli.command("model")
@click.option("--input-size", default=512, type=int, help="Input side in pixels (square).")
@click.option("--width", default=1.0, type=float, help="Multiplier on filters and units.")
@click.option("--weights", default="none",
              help='"imagenet", "none", or the path of a VGG-16 HDF5 weights file.')
@click.option("--dropout", default=0.5, type=float, help="Dropout after fc1 and fc2.")
@click.option("--export", "export_path", type=click.Path(dir_okay=False),
              help="Also write the full model as legacy HDF5 (.h5) here.")
def model_cmd(input_size, width, weights, dropout, export_path):
    """Build the VGG-16 grader and print its layers, output shapes and parameter count."""
    from dr_saliency import model as model_lib

    net = model_lib.build_model((input_size, input_size, 3), weights=_weights_arg(weights),
                                dropout=dropout, width=width)
    _print_model(net, model_lib)
    if export_path:
        model_lib.export_model(net, export_path)
        click.echo(f"Wrote {export_path}")


@cli.command("demo")
@click.option("--input-size", default=512, type=int, help="Input side in pixels (square).")
@click.option("--width", default=1.0, type=float, help="Multiplier on filters and units.")
def demo_cmd(input_size, width):
    """Run what the package can do end to end (for now: build the paper's network and report its
    geometry and size)."""
    from dr_saliency import model as model_lib

    click.echo(f"dr-saliency {__version__}: building the VGG-16 grader at "
               f"{input_size}x{input_size}, width {width}")
    net = model_lib.build_model((input_size, input_size, 3), weights=None, width=width)
    _print_model(net, model_lib)
    pool = net.get_layer("block5_pool").output.shape[1:]
    click.echo(f"block5_pool {tuple(pool)}: ImageNet fc1/fc2 weights "
               f"{'fit' if tuple(pool[:2]) == (7, 7) and width == 1.0 else 'do not fit'} "
               "this geometry.")


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


def main(args=None):
    """Entry point of the ``dr-saliency`` console script."""
    args = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in args or bool(os.environ.get("DR_SALIENCY_DEBUG"))
    try:
        cli.main(args=args, prog_name="dr-saliency", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except (ValueError, TypeError, OSError, KeyError) as exc:
        if debug:
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        click.echo(f"Error: {message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
