"""Install dr_saliency: `pip install -e ".[test]"` for development (see README)."""
import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return f.read()


def _version():
    return re.search(r'__version__ = "([^"]+)"', _read("dr_saliency/_version.py")).group(1)


def _requirements():
    lines = (line.split("#")[0].strip() for line in _read("requirements.txt").splitlines())
    return [line for line in lines if line]


setup(
    name="dr_saliency",
    version=_version(),
    description=(
        "Weakly-supervised lesion localization in fundus images with iterative saliency map "
        "refinement (González-Gonzalo et al., MIDL 2018), in TensorFlow/Keras."
    ),
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    # The bundled grader and its model card live in the repository's top-level data/ folder; the
    # package installs them as dr_saliency.bundled (dr_saliency.grader.model.bundled_model_path
    # finds them there, or in data/ in a source checkout).
    packages=find_packages(include=["dr_saliency", "dr_saliency.*"]) + ["dr_saliency.bundled"],
    package_dir={"dr_saliency.bundled": "data"},
    package_data={"dr_saliency": ["py.typed"], "dr_saliency.bundled": ["grader.h5", "README.md"]},
    python_requires=">=3.10",
    install_requires=_requirements(),
    extras_require={
        "test": ["pytest>=7"],
        # Benchmark-only comparison (bench/); never imported by the package.
        "bench": ["tf-keras-vis==0.8.*"],
        # The engine of --workers/--cluster (dr_saliency/jobs/engine.py; docs/choices.md).
        "cluster": ["distributed>=2024.1"],
    },
    entry_points={"console_scripts": ["dr-saliency = dr_saliency.app.console:main"]},
    scripts=[],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
