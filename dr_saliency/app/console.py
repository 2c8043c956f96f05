"""The ``dr-saliency`` executable (console script and ``bin/dr-saliency``).

Importing the command line takes about a second (click, numpy, OpenCV, h5py); a Ctrl-C in that
second would otherwise end in Python's own traceback. Here it ends as a Ctrl-C at any later moment
does: one line and exit code 130.
"""

import sys


def main():
    """Import the command line, then run it (:func:`dr_saliency.app.cli.main`)."""
    try:
        from dr_saliency.app.cli import main as run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        sys.exit(130)
    run()


if __name__ == "__main__":  # pragma: no cover
    main()
