"""``python -m placeholder_etl`` is the ``placeholder-etl`` command."""

from placeholder_etl.cli import app

if __name__ == "__main__":
    app()
