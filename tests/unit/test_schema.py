"""The record schema is written once (core/schema.py): what is derived from it agrees with the
API's records, and a field added there reaches every table and the contract."""

from __future__ import annotations

import shutil
import subprocess
import sys
import typing

from typing_extensions import is_typeddict

from placeholder_api.fakedata import make_record
from placeholder_etl.core.contract import RECORD_TYPES
from placeholder_etl.core.rows import FLAT_COLUMNS, SEED_COLUMNS, row_of
from placeholder_etl.core.schema import FIELDS, SEED, column_kinds, nested
from tests.helpers import ROOT


def _leaves(record: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in record.items():
        if isinstance(value, dict):
            paths += _leaves(value, f"{prefix}{key}.")
        else:
            paths.append(prefix + key)
    return paths


def test_the_schema_is_every_field_the_api_sends_in_its_order() -> None:
    for resource, fields in FIELDS.items():
        record = make_record(resource, 1, seed=0)
        assert _leaves(record) == [field.path for field in fields], resource


def test_the_readers_and_columns_follow_the_schema() -> None:
    user = make_record("users", 1, seed=0)
    assert row_of("users")(user)[9] == user["address"]["geo"]["lng"]
    assert FLAT_COLUMNS["users"][8:10] == ("address_geo_lat", "address_geo_lng")
    assert FLAT_COLUMNS["posts"] == ("user_id", "id", "title", "body")
    assert tuple(column for column, _ in SEED) == SEED_COLUMNS
    assert column_kinds() == {
        "ID": "int",
        "id": "int",
        "user_id": "int",
        "post_id": "int",
        "album_id": "int",
        "address_geo_lat": "coordinate",
        "address_geo_lng": "coordinate",
        "completed": "bool",
    }


def test_the_contract_types_are_the_schema() -> None:
    def shape(record_type: type) -> dict:
        hints = typing.get_type_hints(record_type, include_extras=True)
        return {key: shape(hint) if is_typeddict(hint) else hint for key, hint in hints.items()}

    users = shape(RECORD_TYPES["users"])
    assert list(users) == list(nested(FIELDS["users"]))
    assert users["address"]["geo"] == {"lat": str, "lng": str}
    assert shape(RECORD_TYPES["todos"])["completed"] is bool


ADD_A_FIELD = r"""
import io, os, sys
import orjson, pyarrow.parquet as pq
from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import ContractError
from placeholder_etl.core.fastpath import page_tables
from placeholder_etl.core.store import Store
from placeholder_etl.core.tables import table_header, write_table

todos = [
    {"userId": 1, "id": n, "title": f"todo {n}", "completed": n == 2, "priority": 10 * n}
    for n in (1, 2)
]
page = page_tables("todos", orjson.dumps(todos))
print(table_header("todos").decode(), page.tables["todos"].decode(), sep="", end="")
store = Store.open(sys.argv[1])
store.put(store.path("p1.csv"), page.tables["todos"])
out = io.BytesIO()
write_table("todos", store, [store.path("p1.csv")], out, 2, "parquet")
print(pq.read_table(io.BytesIO(out.getvalue())).schema.field("priority").type)
try:
    check_records("todos", [{k: v for k, v in todos[0].items() if k != "priority"}])
except ContractError as exc:
    print(exc)
sys.stdout.flush()
os._exit(0)  # as the command line does: Arrow's pools can abort in the interpreter's teardown
"""


def test_a_field_added_to_the_schema_reaches_the_csv_parquet_and_contract(tmp_path) -> None:
    """The one edit: a line in FIELDS, in a copy of the package."""
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "placeholder_etl", copy / "placeholder_etl")
    schema = copy / "placeholder_etl" / "core" / "schema.py"
    declared = '"todos": _fields("userId:int", "id:int", "title", "completed:bool"),'
    assert declared in schema.read_text()
    schema.write_text(
        schema.read_text().replace(declared, declared.replace('bool"', 'bool", "priority:int"'))
    )
    (tmp_path / "pages").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", ADD_A_FIELD, str(tmp_path / "pages")],
        env={"PYTHONPATH": f"{copy}:{ROOT / 'src'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "user_id,id,title,completed,priority",
        "1,1,todo 1,False,10",
        "1,2,todo 2,True,20",
    ]
    assert lines[3] == "int64"
    assert lines[4] == "todos: record id=1 field priority: missing"
