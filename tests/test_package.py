"""The package's top level: lazy re-exports, no TensorFlow at import, modules free of TF."""

import subprocess
import sys

import pytest

import dr_saliency


@pytest.mark.parametrize("name", [n for n in dr_saliency.__all__ if n != "__version__"])
def test_every_export_resolves(name):
    assert getattr(dr_saliency, name) is not None


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dr_saliency.nope


def test_import_is_light():
    code = ("import sys, dr_saliency, dr_saliency.app.cli, dr_saliency.fundus.synth, dr_saliency.fundus.datasets, "
            "dr_saliency.fundus.prepare, dr_saliency.refinement.erase, dr_saliency.refinement.loop, dr_saliency.refinement.store, "
            "dr_saliency.refinement.run, dr_saliency.grader.augment, dr_saliency.grader.metrics, dr_saliency.figures.plots; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_command_line_starts_without_plotting_or_the_wiring():
    # Every command, --help included, pays for what the CLI module imports: matplotlib and the
    # wiring (models, stores, reports) are imported by the commands that use them.
    code = ("import sys, dr_saliency.app.cli; "
            "print(sorted(m for m in ('matplotlib', 'dr_saliency.jobs.refine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
