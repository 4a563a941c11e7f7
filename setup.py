"""Package list for the wheel; everything else is in pyproject.toml.

The layer folders (and ``executor/``, the Functions' command) sit at the top of the repo and install as
``stashflow.<folder>``. pyproject.toml can
only list such renamed packages by hand, and a hand list silently drops new subpackages (it once left
out ``stashflow.addons.model``), so they are found here. localkube/, tests/, bench/ and scripts/ are
not layers and stay out of the wheel (tests/test_wheel.py checks both).
"""

from setuptools import find_packages, setup

LAYERS = ("addons", "tasks", "flows", "worker", "deployments", "executor")

setup(
    package_dir={f"stashflow.{layer}": layer for layer in LAYERS},
    packages=[f"stashflow.{layer}{'.' + sub if sub else ''}"
              for layer in LAYERS for sub in ("", *find_packages(layer))],
)
