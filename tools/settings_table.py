"""Write docs/configuration.md's settings table from the settings models (one source of truth).

    .venv/bin/python tools/settings_table.py          # rewrite the table in docs/configuration.md
    .venv/bin/python tools/settings_table.py --check  # exit 1 if it is out of date

``tests/unit/test_readme.py`` runs the check: a setting added, renamed or re-defaulted in
``placeholder_etl.core.settings`` fails the tests until the docs say so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import BaseModel

from placeholder_etl.core.settings import RunSettings
from placeholder_etl.options import ENV_DEFAULTS

NONE = "\u2013"  # an en dash: the tables' "not set"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
START = "<!-- settings:start (tools/settings_table.py writes this table) -->"
END = "<!-- settings:end -->"


def _default(name: str, field) -> str:
    default = field.get_default()
    if default is None:
        return NONE
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def table() -> str:
    """The configuration table: CLI option, flow parameter, env variable, default, meaning."""
    rows = [
        "| CLI option | flow parameter | env variable | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, field in RunSettings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for sub, subfield in annotation.model_fields.items():
                rows.append(_row(sub, f"{name}.{sub}", subfield))
        else:
            rows.append(_row(name, name, field))
    return "\n".join(rows)


def _row(name: str, parameter: str, field) -> str:
    option = "--" + name.replace("_", "-")
    if field.annotation in (bool, bool | None):
        option += f"/--no-{name.replace('_', '-')}"
    env = f"`{ENV_DEFAULTS[name]}`" if name in ENV_DEFAULTS else NONE
    meaning = (field.description or "").replace("|", "\\|")
    return f"| `{option}` | `{parameter}` | {env} | {_default(name, field)} | {meaning} |"


def rewritten(text: str) -> str:
    """``text`` (the page) with the table between the markers replaced."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args()
    text = PAGE.read_text()
    new = rewritten(text)
    if args.check:
        if new != text:
            print("docs/configuration.md's settings table is out of date:", file=sys.stderr)
            print("run .venv/bin/python tools/settings_table.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(new)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
