"""``python -m placeholder_api`` is the ``placeholder-api`` command."""

from placeholder_api.cli import main

if __name__ == "__main__":
    main()
