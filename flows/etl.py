"""Deployment entrypoint for the placeholder-etl flow (``flows/etl.py:etl``).

The flow itself lives in the installed package (:mod:`placeholder_etl.flow`) so that Dask
workers and the CLI import the same code; this file is what ``prefect.yaml`` and
``flow.serve`` point at.
"""

from placeholder_etl.flow import etl

__all__ = ["etl"]

if __name__ == "__main__":  # Dask's worker processes need the guard
    etl()
