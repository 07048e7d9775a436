"""The client's rules that need no server: URLs, decoding, headers, retries, redaction."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
import requests

from placeholder_etl.core import client as client_module
from placeholder_etl.core import responses
from placeholder_etl.core.client import ApiClient, pages_for
from placeholder_etl.core.concurrency import ordered_map
from placeholder_etl.core.contract import check_records
from placeholder_etl.core.errors import (
    ContractError,
    EtlError,
    PermanentError,
    TransientError,
    is_transient,
)
from placeholder_etl.core.redact import redact, redact_url, register_url_secrets
from placeholder_etl.core.rows import flat_rows
from placeholder_etl.core.settings import ClientSettings, FetchSettings, default_cache_dir
from placeholder_etl.core.store import Store

WHERE = "users page 2 from http://api.test/users"


def raw_page(body: bytes, content_type: str = "application/json", resource: str = "users"):
    """A page as ``ApiClient.get_page`` returns it: the body not decoded yet."""
    return client_module.RawPage(
        resource, 2, "http://api.test/users", WHERE, body, content_type, None, 0
    )


def response(body: bytes, content_type: str = "application/json", **headers: str):
    """A real ``requests.Response`` as the session would return it."""
    made = requests.Response()
    made.status_code = 200
    made._content = body
    made.headers.update({"Content-Type": content_type, **headers})
    return made


def test_page_urls_for_both_paging_styles() -> None:
    with ApiClient("http://api.test/") as api:
        assert api.base_url == "http://api.test"
        assert api.page_url("users", 3, 10) == "http://api.test/users?_page=3&_limit=10"
        assert api.page_url("users", 3, 10, "start") == "http://api.test/users?_start=20&_limit=10"
        assert api.page_url("posts", 1, 5, "start") == "http://api.test/posts?_start=0&_limit=5"


def test_the_session_retries_what_is_transient_only() -> None:
    settings = ClientSettings(retries=5, backoff=0.5, max_retry_after=7, pool_size=3)
    with ApiClient("http://api.test", settings) as api:
        adapter = api.session.get_adapter("http://api.test")
        retry = adapter.max_retries
        assert (retry.total, retry.connect, retry.read, retry.status) == (5, 5, 5, 5)
        assert retry.backoff_factor == 0.5
        assert retry.backoff_jitter == 0.25
        assert set(retry.status_forcelist) == {429, 500, 502, 503, 504}
        assert retry.allowed_methods == frozenset({"GET"})
        assert retry.respect_retry_after_header
        assert retry.max_retry_after == 7
        assert adapter._pool_maxsize == 3
        assert api.session.get_adapter("https://x").max_retries is retry
        assert api.session.headers["Accept"] == "application/json"


def test_retry_after_is_capped_at_the_setting() -> None:
    with ApiClient("http://api.test", ClientSettings(max_retry_after=2)) as api:
        retry = api.session.get_adapter("http://api.test").max_retries
        assert retry.get_retry_after(response(b"", **{"Retry-After": "30"})) == 2
        assert retry.get_retry_after(response(b"", **{"Retry-After": "1"})) == 1
        assert retry.get_retry_after(response(b"")) is None


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (
            b'[{"id": 1}',
            "application/json",
            "response is not JSON (application/json: '[{\"id\": 1}'…)",
        ),
        (b"<html>502</html>", "text/html", "response is an HTML page, not JSON"),
        (b"  <!DOCTYPE html>", "", "response is an HTML page, not JSON (no content type"),
        (b'["\xff"]', "application/json", "response is not valid UTF-8 JSON"),
        (b'{"data": []}', "application/json", "response is not a JSON list (got dict)"),
        (b'"users"', "application/json", "response is not a JSON list (got str)"),
    ],
)
def test_bodies_that_are_not_a_json_list_are_permanent(body, content_type, message) -> None:
    with pytest.raises(PermanentError) as caught:
        responses.decode_list(body, content_type, WHERE)
    assert str(caught.value).startswith(f"{WHERE}: {message}")
    with pytest.raises(PermanentError) as caught:  # a fetched page decodes the same way
        raw_page(body, content_type).records()
    assert str(caught.value).startswith(f"{WHERE}: {message}")


def test_a_json_list_is_decoded() -> None:
    assert responses.decode_list(b'[{"id": 1}, 2]', "application/json", WHERE) == [
        {"id": 1},
        2,
    ]


def test_a_fetched_page_is_decoded_and_checked_when_asked() -> None:
    """``get_page`` returns the body as sent; ``RawPage.records`` decodes and checks it."""
    post = {"userId": 1, "id": 7, "title": "t", "body": "b"}
    page = raw_page(orjson.dumps([post | {"extra": [1]}]), resource="posts")
    assert page.records() == [post]  # extra fields dropped
    breach = raw_page(orjson.dumps([post | {"id": "7"}]), resource="posts")
    with pytest.raises(ContractError, match="^" + re.escape(f"{WHERE}: record id='7' field id")):
        breach.records()


@pytest.mark.parametrize(
    ("header", "total", "message"),
    [
        (None, None, None),
        ("25", 25, None),
        ("0", 0, None),
        ("NaN", None, "X-Total-Count is not a number ('NaN')"),
        ("2.5", None, "X-Total-Count is not a number ('2.5')"),
        ("-1", None, "X-Total-Count is negative (-1)"),
    ],
)
def test_x_total_count_must_be_a_whole_number(header, total, message) -> None:
    made = response(b"[]") if header is None else response(b"[]", **{"X-Total-Count": header})
    if message is None:
        assert responses.total_count(made, WHERE) == total
    else:
        with pytest.raises(PermanentError, match="^" + re.escape(f"{WHERE}: {message}")):
            responses.total_count(made, WHERE)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))",
            "connection reset by the server",
        ),
        ("[Errno 111] Connection refused", "connection refused"),
        (
            "RemoteDisconnected('Remote end closed connection')",
            "server closed the connection without answering",
        ),
        ("('Connection aborted.', BrokenPipe())", "connection aborted"),
        ("Name or service not known", "host name not found"),
        ("something else", "ConnectionError"),
    ],
)
def test_connection_errors_are_named_by_their_cause(text, reason) -> None:
    assert responses.plain_reason(requests.ConnectionError(text)) == reason


def test_pages_for_rounds_up() -> None:
    assert [pages_for(n, 10) for n in (0, 1, 10, 11, 25)] == [0, 1, 1, 2, 3]


def test_ordered_map_passes_on_the_first_error() -> None:
    def fail_on_three(n: int) -> int:
        if n == 3:
            raise PermanentError("page 3")
        return n

    results = ordered_map(fail_on_three, range(10), in_flight=2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(PermanentError, match="page 3"):
        next(results)


def test_errors_say_whether_retrying_may_help() -> None:
    assert is_transient(TransientError("x"))
    assert is_transient(RuntimeError("unknown: try again"))
    assert not is_transient(PermanentError("x"))
    assert not is_transient(ContractError("x"))
    error = EtlError("one line")
    assert (str(error), error.message, error.transient) == ("one line", "one line", False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bob:hunter2@h/x?_page=1", "https://bob:***@h/x?_page=1"),
        ("https://:hunter2@h/x", "https://:***@h/x"),
        ("https://ghp_token123@h/x", "https://***@h/x"),  # a lone user name may be a token
        (
            "http://h/x?Api-Key=1&Token=2&auth=3&password=4&sig=5&q=7",
            "http://h/x?Api-Key=***&Token=***&auth=***&password=***&sig=***&q=7",
        ),
        ("http://h/x?_page=1&_limit=10", "http://h/x?_page=1&_limit=10"),
        ("http://h/x?secret=&x=1", "http://h/x?secret=***&x=1"),
    ],
)
def test_redaction_hides_passwords_and_secret_values_only(url, shown) -> None:
    assert redact_url(url) == shown
    assert redact(f"error: GET {url} failed") == f"error: GET {shown} failed"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "Failed to parse: http://alice:s3cretPW@127.0.0.1:99999/users?_page=1",
            "Failed to parse: http://alice:***@127.0.0.1:99999/users?_page=1",
        ),
        ("No adapters for 'htp://alice:s3cretPW@h/x'", "No adapters for 'htp://alice:***@h/x'"),
        (
            "Retrying after connection broken: /users?api_key=K123&_page=2",
            "Retrying after connection broken: /users?api_key=***&_page=2",
        ),
        ("headers {'Authorization': 'Bearer abc.def'}", "headers {'Authorization': '***'}"),
        ("Authorization: Basic YWxpY2U6cHc=", "Authorization: ***"),
        ("X-Api-Key: k-123", "X-Api-Key: ***"),
        ("users page 3: record id=7 field email: missing", None),  # nothing to hide
        ("contact Sincere@april.biz", None),  # an e-mail address is no userinfo
    ],
)
def test_the_redaction_gate_hides_secrets_in_any_text(text, shown) -> None:
    assert redact(text) == (text if shown is None else shown)


def test_registered_secrets_are_hidden_in_every_form() -> None:
    register_url_secrets("http://carol:pa%2Fss%40word@h/?api_key=Kx9%3Dq&_page=1")
    for text in ("pa/ss@word", "pa%2Fss%40word", "Kx9=q", "Kx9%3Dq"):
        assert redact(f"<{text}>") == "<***>", text
    register_url_secrets("http://dave:pw@h/")  # too short to hide anywhere else
    assert redact("pw") == "pw"


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{"userId": 1, "id": 7, "title": "t", "body": 5}],
            "record id=7 field body: input should be a valid string, got 5",
        ),
        ([{"userId": 1, "id": 7, "title": "t"}], "record id=7 field body: missing"),
        (["not a record"], "record id='?' field (record): input should be a valid dictionary"),
        (
            [{"userId": "1", "id": 8, "title": "t", "body": "b"}],
            "record id=8 field userId: input should be a valid integer, got '1'",
        ),
    ],
)
def test_contract_breaches_name_the_record_and_the_field(records, message) -> None:
    with pytest.raises(ContractError) as caught:
        check_records("posts", records, "posts page 1 from http://h")
    assert str(caught.value).startswith(f"posts page 1 from http://h: {message}")
    with pytest.raises(ContractError, match=r"^posts: record id="):
        check_records("posts", records)


def test_a_coordinate_that_is_not_a_number_is_a_breach() -> None:
    from placeholder_api.fakedata import make_record

    user = make_record("users", 4, 0)
    user["address"]["geo"]["lng"] = "east"
    with pytest.raises(
        ContractError, match=r"^users: record id=4 field address.geo.lng: not a number, got 'east'$"
    ):
        flat_rows("users", [make_record("users", 3, 0), user])
    (row,) = flat_rows("users", [make_record("users", 3, 0)])
    assert isinstance(row[8], float)
    assert isinstance(row[9], float)


def test_the_cache_folder_follows_the_settings_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("PLACEHOLDER_ETL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "placeholder-etl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "placeholder-etl"
    monkeypatch.setenv("PLACEHOLDER_ETL_CACHE_DIR", "~/pages")
    assert default_cache_dir() == tmp_path / "home" / "pages"
    mine = FetchSettings(cache_dir="~/mine").cache_url()
    assert Path(Store.open(mine).root) == tmp_path / "home" / "mine"
    assert FetchSettings().cache_url() == str(tmp_path / "home" / "pages")
    assert FetchSettings().cache_url("out") == str(tmp_path / "home" / "pages")
    assert FetchSettings().cache_url("file:///tmp/out") == str(tmp_path / "home" / "pages")
    # an object-store output keeps its pages beside it, where remote workers can write
    assert FetchSettings().cache_url("s3://b/out/") == "s3://b/out/_placeholder_etl/cache"
    assert FetchSettings(cache_dir="~/mine").cache_url("s3://b/out") == "~/mine"


def test_the_log_filter_redacts_messages_arguments_and_tracebacks() -> None:
    """What a handler writes (the terminal, Prefect's API handler) passes the gate: the
    message, its arguments and the traceback, for handlers there when it is installed."""
    import io
    import logging

    from placeholder_etl.core.redact import install_log_redaction

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("placeholder_etl.test_redaction")
    logger.addHandler(handler)
    register_url_secrets("http://erin:Tr0ub4dor@h/?api_key=Zk9x")
    try:
        install_log_redaction()
        install_log_redaction()  # idempotent
        assert handler.filters.count(handler.filters[0]) == 1
        try:
            raise ValueError("GET http://erin:Tr0ub4dor@h/users?api_key=Zk9x failed")
        except ValueError:
            logger.exception("fetching %s", "http://h/?api_key=Zk9x")
        logger.warning("the key was %s", "Zk9x")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "Traceback" in written
    assert "http://erin:***@h/users?api_key=*** failed" in written
    assert "Tr0ub4dor" not in written
    assert "Zk9x" not in written
    assert "the key was ***" in written
