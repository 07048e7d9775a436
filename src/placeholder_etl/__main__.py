"""``python -m placeholder_etl`` is the ``placeholder-etl`` command."""

from placeholder_etl.cli import main

if __name__ == "__main__":
    main()
