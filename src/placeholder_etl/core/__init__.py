"""The pipeline without Prefect or Dask: settings, the API client, the contract, rows and
tables, the outputs (a folder, an object store) and their commit, the manifest, and the
pipeline's steps as plain functions.

Notebooks call these directly; :mod:`placeholder_etl.flow` wraps them in Prefect tasks.
Nothing here imports Prefect, Dask or Jupyter (``tests/unit/test_layers.py`` holds it to that).
"""
