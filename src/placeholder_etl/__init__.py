"""placeholder-etl: the JSONPlaceholder API to CSV, as a Prefect 3 flow on Dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("placeholder-etl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
