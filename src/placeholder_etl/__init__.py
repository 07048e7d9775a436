"""placeholder-etl: the JSONPlaceholder API to CSV, as a Prefect 3 flow on Dask."""

import sys
from importlib.metadata import PackageNotFoundError, version

# Importing Prefect imports jsonschema, which builds the `rfc3987_syntax` grammar (only used to
# check the "iri" string format) when that package is installed, as Jupyter installs it: about
# 1.8 s of a 4-8 s import, paid by the CLI and by every Dask worker. Nothing here validates
# IRIs, so jsonschema is told the package is absent (it skips that one format check).
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

try:
    __version__ = version("placeholder-etl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"
