"""Deployment entrypoint for the placeholder-etl flow (``flows/etl.py:etl``).

The flow itself lives in the package (:mod:`placeholder_etl.flow`) so that Dask workers and the
CLI import the same code; this file is what ``prefect.yaml`` points at. It imports the package
from the ``src/`` folder beside it — the checkout (``*-local``) or the clone (``daily-git``)
the deployment's pull steps chose — ahead of any copy installed in the worker's Python, so a
``daily-git`` run uses its clone's code without installing anything over the worker's packages.
Dask worker processes the run starts inherit the path.
"""

import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
OWN = SRC / "placeholder_etl"  # absent only where this file was copied without its source
if OWN.is_dir():  # first on the path, ahead of any installed copy
    if str(SRC) in sys.path:
        sys.path.remove(str(SRC))
    sys.path.insert(0, str(SRC))

# imported once the path is set
import placeholder_etl
from placeholder_etl.flow import etl

if OWN.is_dir() and Path(placeholder_etl.__file__).resolve().parent != OWN:
    raise ImportError(
        f"placeholder_etl was imported from {Path(placeholder_etl.__file__).parent} before "
        f"this deployment could import it from {SRC}"
    )

__all__ = ["etl"]

if __name__ == "__main__":  # Dask's worker processes need the guard
    etl()
