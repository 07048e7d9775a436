"""The API client against the bundled server over loopback: paging, counting, every fault."""

from __future__ import annotations

import re
import time

import pytest
import requests

from placeholder_api.server import make_server
from placeholder_etl.core.client import MAX_REDIRECTS, ApiClient
from placeholder_etl.core.concurrency import ordered_map
from placeholder_etl.core.errors import ContractError, PermanentError, TransientError
from placeholder_etl.core.responses import Validators
from placeholder_etl.core.settings import ClientSettings
from tests.helpers import gaps_by_url
from tests.hostile import hostile_server

FAST = ClientSettings(timeout=2, retries=3, backoff=0.01)


@pytest.mark.parametrize("paging", ["page", "start"])
def test_pages_cover_every_record_once(api, paging) -> None:
    with ApiClient(api.url, FAST) as client:
        assert client.count("users", 10, paging) == 25
        pages = [client.fetch_page("users", n, 10, paging) for n in (1, 2, 3)]
    ids = [r["id"] for page in pages for r in page.records]
    assert ids == list(range(1, 26))
    assert [len(p.records) for p in pages] == [10, 10, 5]
    assert all(p.total == 25 for p in pages)
    query = "_page=2&_limit=10" if paging == "page" else "_start=10&_limit=10"
    assert pages[1].url == f"{api.url}/users?{query}"


def test_counts_match_the_documented_ratios(api) -> None:
    with ApiClient(api.url, FAST) as client:
        counts = {r: client.count(r, 1) for r in ("posts", "comments", "photos", "todos")}
    assert counts == {"posts": 250, "comments": 1250, "photos": 12500, "todos": 500}


def test_records_keep_the_documented_shape(api) -> None:
    with ApiClient(api.url, FAST) as client:
        (user,) = client.fetch_page("users", 1, 1).records
    assert set(user) == {
        "id",
        "name",
        "username",
        "email",
        "address",
        "phone",
        "website",
        "company",
    }
    assert isinstance(user["address"]["geo"]["lat"], str)


def test_count_is_none_without_x_total_count() -> None:
    with make_server(users=5, fault="no-total") as server, ApiClient(server.url, FAST) as c:
        assert c.count("users", 10) is None
        assert len(c.fetch_page("users", 1, 10).records) == 5


def test_503_burst_is_retried_and_counted() -> None:
    with make_server(users=5, fault="5xx:2") as server, ApiClient(server.url, FAST) as c:
        page = c.fetch_page("users", 1, 10)
        assert len(page.records) == 5
        assert page.retries == 2


def test_429_waits_for_retry_after() -> None:
    with make_server(users=5, fault="429:1") as server, ApiClient(server.url, FAST) as c:
        started = time.perf_counter()
        page = c.fetch_page("users", 1, 10)
        assert time.perf_counter() - started >= 0.9
        assert page.retries == 1


def test_retry_after_is_capped() -> None:
    capped = ClientSettings(timeout=2, retries=1, backoff=0.01, max_retry_after=0.2)
    with make_server(users=5, fault="429:30") as server, ApiClient(server.url, capped) as c:
        started = time.perf_counter()
        c.fetch_page("users", 1, 10)
        assert time.perf_counter() - started < 5


def test_request_retries_back_off_exponentially_with_jitter() -> None:
    """urllib3's backoff as the server sees it: the first retry at once, then factor x 2,
    factor x 4, each plus a random jitter of up to factor / 2."""
    settings = ClientSettings(timeout=5, retries=3, backoff=0.4, pool_size=6)
    with make_server(users=60, fault="5xx:3") as server, ApiClient(server.url, settings) as c:
        pages = list(ordered_map(lambda n: c.fetch_page("users", n, 10), range(1, 7), 6))
        log = server.log()
    assert [p.retries for p in pages] == [3] * 6
    gaps = gaps_by_url(log)
    assert len(gaps) == 6
    # A wait is never shorter than its backoff; a stalled machine can make one longer (CI once
    # saw a 9.5 s stall), so the upper bounds are checked on the median of the six URLs.
    firsts, seconds, thirds = (sorted(step) for step in zip(*gaps.values(), strict=True))
    assert firsts[3] < 0.15, firsts
    assert seconds[0] >= 0.8, seconds
    assert seconds[3] < 0.8 + 0.2 + 0.15, seconds
    assert thirds[0] >= 1.6, thirds
    assert thirds[3] < 1.6 + 0.2 + 0.15, thirds
    jitters = [s - 0.8 for s in seconds[:4]] + [t - 1.6 for t in thirds[:4]]
    assert max(jitters) - min(jitters) > 0.05, jitters  # random, not a fixed delay


def test_persistent_5xx_is_transient_after_retries() -> None:
    with make_server(users=5, fault="5xx:99") as server, ApiClient(server.url, FAST) as c:
        with pytest.raises(TransientError, match=r"users page 1 from .*: HTTP 503 .*tried 4"):
            c.fetch_page("users", 1, 10)
        assert server.stats()["requests"] == 4


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        ("malformed", PermanentError, "response is not JSON"),
        ("html", PermanentError, "response is an HTML page, not JSON"),
        ("bad-utf8", PermanentError, "response is not valid UTF-8 JSON"),
        ("drift", ContractError, "record id=1 field email: missing"),
        ("drift-type", ContractError, "record id='1' field id: input should be a valid integer"),
        ("not-a-list", PermanentError, "response is not a JSON list (got dict)"),
        ("4xx:410", PermanentError, "HTTP 410 Gone"),
        ("reset", TransientError, "connection failed"),
    ],
)
def test_faults_are_classified_and_named(fault, error, message) -> None:
    with make_server(users=5, fault=fault) as server, ApiClient(server.url, FAST) as c:
        with pytest.raises(error) as caught:
            c.fetch_page("users", 1, 10)
    text = str(caught.value)
    assert text.startswith(f"users page 1 from {server.url}/users?_page=1&_limit=10: ")
    assert message in text


def test_fault_on_one_page_names_that_page() -> None:
    with make_server(users=50, fault="malformed", fault_page=3) as server:
        with ApiClient(server.url, FAST) as c:
            assert len(c.fetch_page("users", 2, 10).records) == 10
            with pytest.raises(PermanentError, match=r"^users page 3 from http://.*not JSON"):
                c.fetch_page("users", 3, 10)


def test_a_server_that_never_answers_times_out() -> None:
    settings = ClientSettings(timeout=0.5, retries=1, backoff=0.01)
    with make_server(users=5, fault="hang") as server, ApiClient(server.url, settings) as c:
        started = time.perf_counter()
        with pytest.raises(TransientError, match=r"no answer within 0.5 s \(tried 2 times\)"):
            c.fetch_page("users", 1, 10)
        assert time.perf_counter() - started < 5


def test_other_4xx_is_permanent(api) -> None:
    with ApiClient(api.url, FAST) as client, pytest.raises(PermanentError, match="HTTP 404"):
        client.fetch_page("nonsense", 1, 10)


def test_a_total_that_is_not_a_number_is_refused() -> None:
    with make_server(users=5, fault="bad-total") as server, ApiClient(server.url, FAST) as c:
        with pytest.raises(PermanentError, match=r"X-Total-Count is not a number \('NaN'\)"):
            c.count("users", 10)
        assert server.stats()["requests"] == 1


def test_empty_users_list_is_refused() -> None:
    with make_server(users=5, fault="empty") as server, ApiClient(server.url, FAST) as c:
        with pytest.raises(PermanentError, match="the users list is empty"):
            c.count("users", 10)


def test_unreachable_server_is_transient() -> None:
    with make_server(users=1) as server:
        url = server.url
    with ApiClient(url, ClientSettings(timeout=1, retries=0)) as c:
        with pytest.raises(TransientError, match="connection failed"):
            c.fetch_page("users", 1, 10)
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=1)


def test_ordered_map_keeps_order_and_bounds_pending_work() -> None:
    running = []

    def slow(n: int) -> int:
        running.append(n)
        time.sleep(0.01 * (5 - n % 5))
        return n * n

    results = list(ordered_map(slow, range(20), in_flight=4))
    assert results == [n * n for n in range(20)]


def test_ordered_map_stops_early_when_the_consumer_does() -> None:
    seen = []

    def record(n: int) -> int:
        seen.append(n)
        return n

    for value in ordered_map(record, iter(range(10_000)), in_flight=3):
        if value == 5:
            break
    assert len(seen) < 20


# --------------------------------------------------------------------------- hostile servers
# Servers of our own that misbehave at the HTTP level (tests/hostile.py); every case ends
# within the bound it states.

SHORT = ClientSettings(timeout=0.5, retries=1, backoff=0.01)


@pytest.mark.parametrize("mode", ["drip-body", "drip-headers"])
def test_a_dripping_server_is_cut_at_the_whole_request_deadline(mode) -> None:
    """One byte every 0.2 s keeps urllib3's per-read timeout happy forever; the deadline
    covers connect, headers and body together: 2 attempts x 0.5 s, within 2 s."""
    with hostile_server(mode, drip=0.2) as server, ApiClient(server.url, SHORT) as client:
        started = time.monotonic()
        with pytest.raises(TransientError, match=r"no answer within 0.5 s \(tried 2 times\)"):
            client.fetch_page("users", 1, 10)
        took = time.monotonic() - started
        assert len(server.requests) == 2
    assert 1.0 <= took < 2.0, took


def test_a_body_cut_short_is_retried_per_request_then_named() -> None:
    settings = ClientSettings(timeout=2, retries=2, backoff=0.01)
    with hostile_server("cut-body") as server, ApiClient(server.url, settings) as client:
        with pytest.raises(TransientError) as caught:
            client.fetch_page("users", 1, 10)
        assert len(server.requests) == 3  # retried like a connection error: 1 + 2
    assert re.fullmatch(
        r"users page 1 from http://127.0.0.1:\d+/users\?_page=1&_limit=10: the response broke "
        r"off after \d+ bytes, \d+ bytes short of its Content-Length \(tried 3 times\)",
        str(caught.value),
    )


def test_retries_share_one_budget_per_request() -> None:
    """A 503 then a cut body then an answer: 2 retries, and never more than the budget."""
    with make_server(users=5, fault="5xx:1") as server, ApiClient(server.url, FAST) as client:
        assert client.get_page("users", 1, 10).retries == 1
    with hostile_server("cut-body") as server, ApiClient(server.url, FAST) as client:
        with pytest.raises(TransientError, match=r"\(tried 4 times\)"):
            client.get_page("users", 1, 10)
        assert len(server.requests) == 4


def test_redirects_are_followed_only_within_the_api() -> None:
    with hostile_server("redirect-same") as server, ApiClient(server.url, SHORT) as client:
        page = client.fetch_page("users", 2, 10)
        assert [r["id"] for r in page.records] == list(range(11, 21))
        assert [r["path"] for r in server.requests] == ["/users", "/v2/users"]
        assert page.retries == 0
    with hostile_server("ok") as other, hostile_server("redirect-host", other=other.url) as server:
        with ApiClient(server.url, SHORT) as client, pytest.raises(PermanentError) as caught:
            client.fetch_page("users", 1, 10)
        assert other.requests == []
    assert f"redirects to {other.url}/users?_page=1&_limit=10, outside the API ({server.url})" in (
        str(caught.value)
    )
    with hostile_server("redirect-loop") as server, ApiClient(server.url, SHORT) as client:
        with pytest.raises(PermanentError, match=r"more than 5 redirects \(a redirect loop\?\)"):
            client.fetch_page("users", 1, 10)
        assert len(server.requests) == 1 + MAX_REDIRECTS
    with hostile_server("redirect-file") as server, ApiClient(server.url, SHORT) as client:
        with pytest.raises(PermanentError, match=r"redirects to file:///etc/passwd, outside"):
            client.fetch_page("users", 1, 10)
        assert len(server.requests) == 1


def test_the_api_urls_path_and_query_are_kept_on_every_request() -> None:
    with hostile_server("ok", users=25) as server:
        with ApiClient(server.url + "/?api_key=K1&x=a%20b", SHORT) as client:
            assert client.count("users", 10) == 25
            page = client.fetch_page("users", 3, 10, "start")
        assert page.url == f"{server.url}/users?api_key=***&x=a+b&_start=20&_limit=10"
        queries = [r["query"] for r in server.requests]
    assert queries == [
        {"api_key": "K1", "x": "a b", "_page": "1", "_limit": "1"},
        {"api_key": "K1", "x": "a b", "_start": "20", "_limit": "10"},
    ]
    with ApiClient("https://api.example/v1/?token=T") as client:
        assert client.page_url("users", 2, 5) == (
            "https://api.example/v1/users?token=T&_page=2&_limit=5"
        )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:3000", "is not a URL: give its scheme, e.g. http://localhost:3000"),
        ("ftp://h/x", "the API must be an http:// or https:// URL"),
        ("http://bob:pw1234@h:99999", "http://bob:***@h:99999 is not a valid URL (Port out of"),
        ("http:///users", "the URL names no host"),
    ],
)
def test_an_unusable_api_url_is_a_permanent_error_before_any_request(url, message) -> None:
    with pytest.raises(PermanentError, match=re.escape(message)) as caught:
        ApiClient(url)
    assert "pw1234" not in str(caught.value)


@pytest.mark.parametrize(
    ("mode", "error", "message"),
    [
        ("big-id", ContractError, "record id=9223372036854775808 field id: a number outside 64"),
        ("bad-gzip", PermanentError, "the response's Content-Encoding (gzip) does not decode"),
        ("html", PermanentError, "response is an HTML page, not JSON"),
    ],
)
def test_hostile_bodies_are_permanent_and_named(mode, error, message) -> None:
    with hostile_server(mode) as server, ApiClient(server.url, SHORT) as client:
        with pytest.raises(error, match=re.escape(message)):
            client.fetch_page("users", 1, 10)
        assert len(server.requests) == 1  # not retried


def test_a_conditional_request_is_answered_304_without_a_body(api) -> None:
    """The bundled server's ETag (json-server's weak one) sent back as If-None-Match: 304
    and no body while the page is unchanged; another tag gets the page."""
    with ApiClient(api.url, FAST) as client:
        page = client.get_page("users", 2, 10)
        assert page.validators is not None
        assert re.fullmatch(r'W/"[0-9a-f]+-[A-Za-z0-9+/]{27}"', page.validators.etag or "")
        assert not page.not_modified
        api.reset_stats()
        same = client.get_page("users", 2, 10, validators=page.validators)
        assert (same.not_modified, same.body, same.validators) == (True, b"", page.validators)
        other = client.get_page("users", 2, 10, validators=Validators(etag='W/"1-nope"'))
    assert not other.not_modified
    assert other.body == page.body
    assert api.stats()["not_modified"] == 1


def test_a_304_to_a_request_that_was_not_conditional_is_an_error() -> None:
    with hostile_server("status", status=304) as server, ApiClient(server.url, FAST) as client:
        with pytest.raises(PermanentError, match=r"users page 1 from .*: HTTP 304"):
            client.get_page("users", 1, 10)
