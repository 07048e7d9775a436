"""Pure transforms and the data contract, on tiny hand-written records."""

from __future__ import annotations

import pandas as pd
import pytest

from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import ContractError
from placeholder_etl.core.rows import FLAT_COLUMNS, FLAT_PATHS, SEED_COLUMNS, row_of
from placeholder_etl.core.transform import (
    ACTIVITY_COLUMNS,
    flatten_records,
    summarize_activity,
    transform_users,
)

LEANNE = {
    "id": 1,
    "name": "Leanne Graham",
    "username": "Bret",
    "email": "Sincere@april.biz",
    "address": {
        "street": "Kulas Light",
        "suite": "Apt. 556",
        "city": "Gwenborough",
        "zipcode": "92998-3874",
        "geo": {"lat": "-37.3159", "lng": "81.1496"},
    },
    "phone": "1-770-736-8031 x56442",
    "website": "hildegard.org",
    "company": {
        "name": "Romaguera-Crona",
        "catchPhrase": "Multi-layered client-server neural-net",
        "bs": "harness real-time e-markets",
    },
}


def _user(uid: int, **changes: object) -> dict:
    return {**LEANNE, "id": uid, "name": f"User {uid}", **changes}


def test_seed_users_table_is_the_tutorials_exactly() -> None:
    csv = transform_users([LEANNE]).to_csv(index=False)
    assert csv == (
        "ID,Name,Username,Email,Address,PhoneNumber,Company\n"
        '1,Leanne Graham,Bret,Sincere@april.biz,"Kulas Light, Apt. 556, Gwenborough",'
        "1-770-736-8031 x56442,Romaguera-Crona\n"
    )


def test_seed_users_are_in_id_order() -> None:
    frame = transform_users([_user(3), _user(1), _user(2)])
    assert frame["ID"].tolist() == [1, 2, 3]
    assert frame["Name"].tolist() == ["User 1", "User 2", "User 3"]


def test_each_flat_column_is_its_path_in_snake_case_and_holds_that_leaf() -> None:
    assert FLAT_COLUMNS["photos"] == ("album_id", "id", "title", "url", "thumbnail_url")
    assert FLAT_COLUMNS["comments"] == ("post_id", "id", "name", "email", "body")
    leaves = []
    for path in FLAT_PATHS["users"]:
        value = LEANNE
        for key in path.split("."):
            value = value[key]
        leaves.append(value)
    assert row_of("users")(LEANNE) == tuple(leaves)  # the hand-written lookup reads every path


def test_flatten_users_names_nested_leaves_and_parses_coordinates() -> None:
    frame = flatten_records("users", [LEANNE])
    assert list(frame.columns) == [  # written out: FLAT_COLUMNS is derived from FLAT_PATHS
        *("id", "name", "username", "email"),
        *("address_street", "address_suite", "address_city", "address_zipcode"),
        *("address_geo_lat", "address_geo_lng", "phone", "website"),
        *("company_name", "company_catch_phrase", "company_bs"),
    ]
    row = frame.iloc[0]
    assert row["address_geo_lat"] == pytest.approx(-37.3159)
    assert row["address_geo_lng"] == pytest.approx(81.1496)
    assert frame["address_geo_lat"].dtype == "float64"
    assert row["company_catch_phrase"] == LEANNE["company"]["catchPhrase"]
    assert row["company_catch_phrase"] == "Multi-layered client-server neural-net"


@pytest.mark.parametrize(
    ("resource", "record", "columns"),
    [
        ("posts", {"userId": 1, "id": 2, "title": "t", "body": "b"}, ["user_id", "id"]),
        (
            "photos",
            {"albumId": 1, "id": 2, "title": "t", "url": "u", "thumbnailUrl": "v"},
            ["album_id", "id", "title", "url", "thumbnail_url"],
        ),
        ("todos", {"userId": 4, "id": 9, "title": "t", "completed": True}, ["completed"]),
    ],
)
def test_flatten_other_resources_uses_snake_case(resource, record, columns) -> None:
    frame = flatten_records(resource, [record])
    assert set(columns) <= set(frame.columns)
    assert len(frame) == 1


def test_flatten_rejects_a_coordinate_that_is_not_a_number() -> None:
    bad = _user(7, address={**LEANNE["address"], "geo": {"lat": "north", "lng": "1"}})
    with pytest.raises(ContractError, match=r"users: record id=7 field address.geo.lat"):
        flatten_records("users", [bad])


def test_summarize_activity_counts_and_ratios() -> None:
    users = pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    posts = pd.DataFrame({"user_id": [1, 1, 2], "id": [10, 11, 12]})
    comments = pd.DataFrame({"post_id": [10, 10, 11, 12], "id": [1, 2, 3, 4]})
    todos = pd.DataFrame(
        {"user_id": [1, 1, 1, 2], "id": [1, 2, 3, 4], "completed": [True, False, True, False]}
    )
    albums = pd.DataFrame({"user_id": [2], "id": [5]})
    photos = pd.DataFrame({"album_id": [5, 5], "id": [1, 2]})
    summary = summarize_activity(users, posts, comments, todos, albums, photos)
    assert tuple(summary.columns) == ACTIVITY_COLUMNS
    assert summary.to_dict("records") == [
        {
            "user_id": 1,
            "name": "a",
            "posts_written": 2,
            "comments_received": 3,
            "todos": 3,
            "todos_done": 2,
            "todos_done_ratio": 0.6667,
            "albums": 0,
            "photos": 0,
        },
        {
            "user_id": 2,
            "name": "b",
            "posts_written": 1,
            "comments_received": 1,
            "todos": 1,
            "todos_done": 0,
            "todos_done_ratio": 0.0,
            "albums": 1,
            "photos": 2,
        },
        {
            "user_id": 3,
            "name": "c",
            "posts_written": 0,
            "comments_received": 0,
            "todos": 0,
            "todos_done": 0,
            "todos_done_ratio": 0.0,
            "albums": 0,
            "photos": 0,
        },
    ]


def test_contract_accepts_the_documented_shape_and_drops_extra_fields() -> None:
    (checked,) = check_records("users", [{**LEANNE, "nickname": "Lea"}])
    assert "nickname" not in checked
    assert checked["address"]["geo"]["lat"] == "-37.3159"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({k: v for k, v in LEANNE.items() if k != "email"}, "record id=1 field email: missing"),
        ({**LEANNE, "id": "1"}, "record id='1' field id: input should be a valid integer"),
        ({**LEANNE, "address": {**LEANNE["address"], "city": 5}}, "field address.city"),
        (
            {**LEANNE, "address": {**LEANNE["address"], "geo": {"lat": -1.0, "lng": "2"}}},
            "field address.geo.lat: input should be a valid string",
        ),
    ],
)
def test_contract_names_record_and_field(record, message) -> None:
    with pytest.raises(ContractError) as caught:
        check_records("users", [LEANNE, record], where="users page 3 from http://x/users")
    assert str(caught.value).startswith("users page 3 from http://x/users: ")
    assert message in str(caught.value)


def _reference_flatten(record: dict, prefix: str = "") -> dict:
    """The obvious definition: every leaf, its path joined with _, camelCase to snake_case."""
    import re

    flat = {}
    for key, value in record.items():
        name = prefix + re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()
        if isinstance(value, dict):
            flat.update(_reference_flatten(value, name + "_"))
        else:
            flat[name] = value
    return flat


@pytest.mark.parametrize("resource", list(FLAT_COLUMNS))
def test_flatten_matches_the_obvious_definition(resource) -> None:
    from placeholder_api.fakedata import make_records

    records = make_records(resource, 1, 40, seed=3)
    expected = pd.DataFrame([_reference_flatten(r) for r in records])
    for column in ("address_geo_lat", "address_geo_lng"):
        if column in expected:
            expected[column] = expected[column].astype(float)
    frame = flatten_records(resource, records)
    assert list(frame.columns) == list(expected.columns)
    assert frame.to_csv(index=False) == expected.to_csv(index=False)


@pytest.mark.parametrize("keep_formulas", [False, True])
@pytest.mark.parametrize("odd_at", ["start", "end", "none"])
@pytest.mark.parametrize("resource", list(FLAT_COLUMNS))
def test_fast_rows_are_byte_for_byte_the_pandas_rows(resource, odd_at, keep_formulas) -> None:
    """The pipeline writes CSV from tuples; it must equal the DataFrame path exactly.

    Odd values (formulas, quotes, newlines, unicode) in the first records' first text
    field, in the last record's last text field, or nowhere (the unguarded fast path).
    """
    from placeholder_api.fakedata import make_records
    from placeholder_etl.core.rows import csv_rows, flat_rows, seed_row
    from placeholder_etl.core.transform import neutralise_formulas

    records = make_records(resource, 1, 300, seed=11)
    odd = ['=cmd|"x"', "+1", "-2", "@SUM(A1)", "", 'quote "q", comma', "line\nbreak", "Zoë ✓"]
    text_keys = [k for k, v in records[0].items() if isinstance(v, str)]
    if odd_at == "start":
        for record, value in zip(records, odd, strict=False):
            record[text_keys[0]] = value
    elif odd_at == "end":
        records[-1][text_keys[-1]] = "=1+1"

    def pandas_bytes(frame: pd.DataFrame) -> bytes:
        frame = frame if keep_formulas else neutralise_formulas(frame)
        return frame.to_csv(index=False, header=False).encode()

    flat = flatten_records(resource, records)
    assert csv_rows(flat_rows(resource, records), keep_formulas) == pandas_bytes(flat)
    if resource == "users":
        seed = transform_users(records)
        assert csv_rows(map(seed_row, records), keep_formulas) == pandas_bytes(seed)


def test_csv_header_is_the_pandas_header() -> None:
    from placeholder_etl.core.rows import csv_header

    for columns in (SEED_COLUMNS, *FLAT_COLUMNS.values()):
        expected = pd.DataFrame(columns=list(columns)).to_csv(index=False).encode()
        assert csv_header(columns) == expected
