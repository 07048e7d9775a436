"""The bundled JSONPlaceholder server and its generated data, over real loopback HTTP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import requests

from placeholder_api.fakedata import make_record, make_records
from placeholder_api.resources import RESOURCES
from placeholder_api.server import ApiServer, bundled_server, make_server, parse_fault
from tests.helpers import listening_sockets

# The real API's shapes (key order matters), from jsonplaceholder.typicode.com.
SHAPES: dict[str, dict[str, Any]] = {
    "users": {
        "id": int,
        "name": str,
        "username": str,
        "email": str,
        "address": {
            "street": str,
            "suite": str,
            "city": str,
            "zipcode": str,
            "geo": {"lat": str, "lng": str},
        },
        "phone": str,
        "website": str,
        "company": {"name": str, "catchPhrase": str, "bs": str},
    },
    "posts": {"userId": int, "id": int, "title": str, "body": str},
    "comments": {"postId": int, "id": int, "name": str, "email": str, "body": str},
    "albums": {"userId": int, "id": int, "title": str},
    "photos": {"albumId": int, "id": int, "title": str, "url": str, "thumbnailUrl": str},
    "todos": {"userId": int, "id": int, "title": str, "completed": bool},
}
PARENT_BLOCK = {"posts": 10, "comments": 5, "albums": 10, "photos": 50, "todos": 20}
USERS = 10
TIMEOUT = 5


@pytest.fixture(scope="module")
def srv() -> Iterator[ApiServer]:
    """A shared read-only server of 10 users (tests needing stats or faults make their own)."""
    with make_server(users=USERS, seed=0) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A keep-alive session."""
    with requests.Session() as session:
        yield session


def get(session: requests.Session, server: ApiServer, path: str, **kwargs: Any) -> Any:
    """GET ``path`` and return the response (timeout defaulted)."""
    kwargs.setdefault("timeout", TIMEOUT)
    return session.get(server.url + path, **kwargs)


def ids(response: requests.Response) -> list[int]:
    """The ids of a list response."""
    assert response.status_code == 200, response.text
    return [record["id"] for record in response.json()]


def assert_shape(value: Any, shape: Any, where: str) -> None:
    """Check key order and leaf types of ``value`` against ``shape``."""
    if isinstance(shape, dict):
        assert isinstance(value, dict), where
        assert list(value) == list(shape), where
        for key, sub in shape.items():
            assert_shape(value[key], sub, f"{where}.{key}")
    else:
        assert type(value) is shape, f"{where}: {value!r} is not {shape.__name__}"


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize("resource", list(SHAPES))
def test_every_record_has_the_real_shape(
    srv: ApiServer, http: requests.Session, resource: str
) -> None:
    """All records of every resource: exact keys in order, int ids, typed leaves."""
    records = get(http, srv, f"/{resource}").json()
    assert len(records) == RESOURCES[resource].count(USERS)
    for record in records:
        assert_shape(record, SHAPES[resource], f"{resource}/{record['id']}")
    assert [r["id"] for r in records] == list(range(1, len(records) + 1))


@pytest.mark.parametrize("resource", list(PARENT_BLOCK))
def test_parent_ids_follow_the_arithmetic(resource: str) -> None:
    """Post i has userId (i-1)//10+1, comment i postId (i-1)//5+1, and so on."""
    key = RESOURCES[resource].parent_key
    assert key is not None
    for record in make_records(resource, 1, 501, seed=3):
        assert record[key] == (record["id"] - 1) // PARENT_BLOCK[resource] + 1


def test_values_look_real_and_exercise_csv_and_utf8() -> None:
    """Commas, double quotes, non-ASCII, multi-line bodies, string coordinates."""
    users = make_records("users", 1, 2001, seed=0)
    flat = [str(v) for u in users for v in (u["name"], u["company"]["name"], u["address"])]
    assert any("," in u["company"]["name"] for u in users)
    assert any('"' in u["company"]["catchPhrase"] for u in users)
    assert any(not u["name"].isascii() for u in users)
    assert any(not value.isascii() for value in flat)
    assert all(re.fullmatch(r"-?\d{1,3}\.\d{4}", u["address"]["geo"]["lat"]) for u in users)
    assert all(re.fullmatch(r"[\w.]+@\w+\.\w+", u["email"], re.ASCII) for u in users)
    assert len({u["username"] for u in users}) == len(users)
    posts = make_records("posts", 1, 1001, seed=0)
    assert all(2 <= p["body"].count("\n") <= 4 for p in posts)
    assert any('"' in p["title"] or "," in p["title"] for p in posts)
    done = [t["completed"] for t in make_records("todos", 1, 1001, seed=0)]
    assert 300 < sum(done) < 600
    photo = make_record("photos", 7, 0)
    assert photo["url"].rsplit("/", 1)[1] == photo["thumbnailUrl"].rsplit("/", 1)[1]


def test_generation_is_pure_and_seeded() -> None:
    """Same (resource, id, seed) gives the same record; another seed other values."""
    for resource in SHAPES:
        assert make_record(resource, 42, 7) == make_record(resource, 42, 7)
        assert make_records(resource, 40, 45, 7)[2] == make_record(resource, 42, 7)
        assert make_record(resource, 42, 7) != make_record(resource, 42, 8)
    with pytest.raises(ValueError, match="unknown resource"):
        make_record("nope", 1, 0)
    with pytest.raises(ValueError, match="start at 1"):
        make_records("users", 0, 3, 0)


def _timed(action: Any) -> float:
    """Seconds taken by ``action()``."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def test_same_seed_same_bytes_other_seed_other_data(http: requests.Session) -> None:
    """Two servers with one seed serve identical bytes; another seed differs."""
    bodies = []
    for seed in (5, 5, 6):
        with make_server(users=3, seed=seed) as server:
            bodies.append(get(http, server, "/users").content)
    assert bodies[0] == bodies[1]
    assert bodies[0] != bodies[2]


# --------------------------------------------------------------------------- lists and paging


def test_counts_and_total_header(srv: ApiServer, http: requests.Session) -> None:
    """X-Total-Count holds each resource's full size whenever _limit is used."""
    for resource in SHAPES:
        response = get(http, srv, f"/{resource}?_limit=1")
        assert response.headers["X-Total-Count"] == str(RESOURCES[resource].count(USERS))
        assert len(response.json()) == 1
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert "X-Total-Count" not in get(http, srv, "/users").headers


def test_page_and_limit_with_link_header(srv: ApiServer, http: requests.Session) -> None:
    """_page/_limit slice, X-Total-Count and json-server's first/prev/next/last links."""
    response = get(http, srv, "/posts?_page=2&_limit=5")
    assert ids(response) == [6, 7, 8, 9, 10]
    assert response.headers["X-Total-Count"] == "100"
    assert response.headers["Access-Control-Expose-Headers"] == "X-Total-Count, Link"
    links = {rel: link["url"] for rel, link in response.links.items()}
    base = srv.url + "/posts?_page={}&_limit=5"
    assert links == {
        "first": base.format(1),
        "prev": base.format(1),
        "next": base.format(3),
        "last": base.format(20),
    }
    last = get(http, srv, "/posts?_page=20&_limit=5")
    assert ids(last) == [96, 97, 98, 99, 100]
    assert set(last.links) == {"first", "prev", "last"}


def test_page_defaults_and_past_the_end(srv: ApiServer, http: requests.Session) -> None:
    """_page alone gives 10; a page past the end is [] with the total and no links."""
    assert ids(get(http, srv, "/comments?_page=3")) == list(range(21, 31))
    past = get(http, srv, "/posts?_page=99&_limit=10")
    assert past.json() == []
    assert past.headers["X-Total-Count"] == "100"
    assert past.links == {}
    assert get(http, srv, "/users?_page=1&_limit=10").links == {}  # one page holds all


def test_start_end_and_start_limit_slice_like_array_slice(
    srv: ApiServer, http: requests.Session
) -> None:
    """_start/_end and _start/_limit; _start alone does not slice."""
    response = get(http, srv, "/posts?_start=5&_end=8")
    assert ids(response) == [6, 7, 8]
    assert response.headers["X-Total-Count"] == "100"
    assert response.headers["Access-Control-Expose-Headers"] == "X-Total-Count"
    assert "Link" not in response.headers
    assert ids(get(http, srv, "/posts?_start=95&_limit=10")) == [96, 97, 98, 99, 100]
    assert ids(get(http, srv, "/posts?_start=-3&_end=100")) == [98, 99, 100]
    assert len(get(http, srv, "/posts?_start=5").json()) == 100


# --------------------------------------------------------------------------- filters and sorts


def test_field_filters_including_deep_and_repeated(srv: ApiServer, http: requests.Session) -> None:
    """field=value, repeated keys (OR), deep keys, booleans; unknown fields are ignored."""
    assert ids(get(http, srv, "/posts?userId=2")) == list(range(11, 21))
    both = get(http, srv, "/posts?userId=2&userId=4&_limit=100")
    assert ids(both) == [*range(11, 21), *range(31, 41)]
    assert both.headers["X-Total-Count"] == "20"
    city = make_record("users", 3, 0)["address"]["city"]
    found = get(http, srv, "/users", params={"address.city": city}).json()
    assert 3 in [u["id"] for u in found]
    assert all(u["address"]["city"] == city for u in found)
    todos = get(http, srv, "/todos?completed=false").json()
    assert todos
    assert not any(t["completed"] for t in todos)
    assert len(get(http, srv, "/users?nope=1").json()) == USERS
    assert get(http, srv, "/posts?userId=01").json() == []


def test_range_not_equal_and_like_operators(srv: ApiServer, http: requests.Session) -> None:
    """_gte, _lte, _ne and _like (case-insensitive regex)."""
    assert ids(get(http, srv, "/users?id_gte=3&id_lte=5")) == [3, 4, 5]
    assert ids(get(http, srv, "/posts?userId_gte=9.5")) == list(range(91, 101))
    assert 1 not in ids(get(http, srv, "/users?id_ne=1"))
    assert len(ids(get(http, srv, "/users?id_ne=1"))) == USERS - 1
    name = make_record("users", 4, 0)["name"].split()[0]
    liked = get(http, srv, "/users", params={"name_like": f"^{name.upper()}"}).json()
    assert 4 in [u["id"] for u in liked]
    assert all(u["name"].lower().startswith(name.lower()) for u in liked)
    assert get(http, srv, "/users?name_like=(").status_code == 400


def test_full_text_q(srv: ApiServer, http: requests.Session) -> None:
    """q matches any leaf, case-insensitively, nested objects included."""
    street = make_record("users", 6, 0)["address"]["street"]
    found = get(http, srv, "/users", params={"q": street.upper()}).json()
    assert 6 in [u["id"] for u in found]
    assert all(street.lower() in str(u).lower() for u in found)
    assert get(http, srv, "/users?q=zzzz-nothing").json() == []


def test_sort_and_order(srv: ApiServer, http: requests.Session) -> None:
    """_sort/_order with comma lists; id desc on the fast path."""
    names = [u["name"] for u in get(http, srv, "/users?_sort=name").json()]
    assert names == sorted(names)
    names = [u["name"] for u in get(http, srv, "/users?_sort=name&_order=desc").json()]
    assert names == sorted(names, reverse=True)
    assert ids(get(http, srv, "/posts?_sort=id&_order=desc&_limit=3")) == [100, 99, 98]
    posts = get(http, srv, "/posts?_sort=userId,id&_order=desc,asc&_limit=12").json()
    assert [(p["userId"], p["id"]) for p in posts] == [(10, i) for i in range(91, 101)] + [
        (9, 81),
        (9, 82),
    ]
    page = get(http, srv, "/comments?_sort=name&_page=2&_limit=5")
    every = sorted(make_records("comments", 1, 501, 0), key=lambda c: c["name"])
    assert ids(page) == [c["id"] for c in every[5:10]]
    assert page.headers["X-Total-Count"] == "500"


# --------------------------------------------------------------------------- routes


@pytest.mark.parametrize(
    ("nested", "flat"),
    [
        ("/users/2/posts", "/posts?userId=2"),
        ("/users/2/todos", "/todos?userId=2"),
        ("/users/2/albums", "/albums?userId=2"),
        ("/posts/3/comments", "/comments?postId=3"),
        ("/albums/2/photos", "/photos?albumId=2"),
    ],
)
def test_nested_routes_filter_by_parent(
    srv: ApiServer, http: requests.Session, nested: str, flat: str
) -> None:
    """/users/2/posts is /posts?userId=2, and so on."""
    expected = get(http, srv, flat).json()
    assert get(http, srv, nested).json() == expected
    assert len(expected) in (5, 10, 20, 50)


def test_single_records_embed_and_expand(srv: ApiServer, http: requests.Session) -> None:
    """/res/id, _embed=children, _expand=parent, on single records and lists."""
    assert get(http, srv, "/posts/7").json() == make_record("posts", 7, 0)
    user = get(http, srv, "/users/1?_embed=posts&_embed=todos").json()
    assert [p["id"] for p in user["posts"]] == list(range(1, 11))
    assert len(user["todos"]) == 20
    posts = get(http, srv, "/posts?_embed=comments&_limit=2").json()
    assert [[c["postId"] for c in p["comments"]] for p in posts] == [[1] * 5, [2] * 5]
    comment = get(http, srv, "/comments/6?_expand=post").json()
    assert comment["post"] == make_record("posts", 2, 0)
    photos = get(http, srv, "/photos?_expand=album&_limit=1").json()
    assert photos[0]["album"]["id"] == 1


@pytest.mark.parametrize(
    "path",
    ["/users/0", "/users/11", "/users/abc", "/users/01", "/nope", "/", "/users/1/comments"],
)
def test_not_found_is_404_with_empty_object(
    srv: ApiServer, http: requests.Session, path: str
) -> None:
    """Absent records and unknown paths answer 404 {}."""
    response = get(http, srv, path)
    assert response.status_code == 404
    assert response.json() == {}


# --------------------------------------------------------------------------- faults


def fault_server(fault: str, **kwargs: Any) -> ApiServer:
    """A small server with ``fault`` injected."""
    return make_server(users=3, fault=fault, **kwargs)


def test_5xx_burst_recovers_after_n_per_url(http: requests.Session) -> None:
    """5xx:2: each distinct URL fails twice with a JSON error, then succeeds."""
    with fault_server("5xx:2") as server:
        codes = [get(http, server, "/users").status_code for _ in range(3)]
        assert codes == [503, 503, 200]
        other = get(http, server, "/users?_limit=1")
        assert other.status_code == 503
        assert "error" in other.json()
        assert server.stats()["faults_injected"] == 3


def test_5xx_rate_is_seeded_and_proportional(http: requests.Session) -> None:
    """5xx-rate:P fails about P of the requests, reproducibly for a seed."""
    runs = []
    for _ in range(2):
        with fault_server("5xx-rate:0.3", seed=9) as server:
            runs.append([get(http, server, "/users/1").status_code for _ in range(100)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}
    assert 15 <= runs[0].count(503) <= 45


def test_429_carries_retry_after_once_per_url(http: requests.Session) -> None:
    """429:3: the first request per URL gets 429 with Retry-After: 3."""
    with fault_server("429:3") as server:
        first = get(http, server, "/posts")
        assert first.status_code == 429
        assert first.headers["Retry-After"] == "3"
        assert get(http, server, "/posts").status_code == 200


def test_slow_and_latency_delay_resources_only(http: requests.Session) -> None:
    """slow:S and --latency sleep before resource answers, not control ones."""
    with fault_server("slow:1.0", latency=1.0) as server:
        assert _timed(lambda: get(http, server, "/users/1").raise_for_status()) >= 2.0
        assert _timed(lambda: get(http, server, "/__control/stats").raise_for_status()) < 1.0


def test_hang_times_out_and_shutdown_stays_prompt(http: requests.Session) -> None:
    """hang: the client times out; shutdown returns fast even with a request held."""
    outcome: list[BaseException] = []
    with fault_server("hang") as server:
        with pytest.raises(requests.Timeout):
            get(http, server, "/users", timeout=0.3)

        def held() -> None:
            try:
                requests.get(server.url + "/users", timeout=30)
            except requests.RequestException as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=held)
        waiter.start()
        time.sleep(0.3)
        assert _timed(server.shutdown) < 10  # not the held request's 30 s
        waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], requests.ConnectionError)


def test_reset_raises_connection_error(http: requests.Session) -> None:
    """reset: a TCP RST, no answer."""
    with fault_server("reset") as server, pytest.raises(requests.ConnectionError):
        get(http, server, "/users")


def test_malformed_body_is_truncated_json(http: requests.Session) -> None:
    """malformed: 200, JSON content type, the body cut in half."""
    with make_server(users=3) as good:
        whole = get(http, good, "/users").content
    with fault_server("malformed") as server:
        response = get(http, server, "/users")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.content == whole[: len(whole) // 2]
        with pytest.raises(requests.JSONDecodeError):
            response.json()


def test_html_error_page(http: requests.Session) -> None:
    """html: 200 with an HTML page instead of JSON."""
    with fault_server("html") as server:
        response = get(http, server, "/users")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert response.text.startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("resource", "lost"),
    [("users", "email"), ("comments", "email"), ("posts", "title"), ("photos", "title")],
)
def test_drift_drops_a_required_field(http: requests.Session, resource: str, lost: str) -> None:
    """drift: every record loses email (users, comments) or title (the others)."""
    with fault_server("drift") as server:
        records = get(http, server, f"/{resource}?_limit=5").json()
        assert records
        assert all(lost not in r and "id" in r for r in records)
        assert lost not in get(http, server, f"/{resource}/1").json()


def test_drift_type_serves_string_ids(http: requests.Session) -> None:
    """drift-type: ids become strings."""
    with fault_server("drift-type") as server:
        records = get(http, server, "/todos?_limit=3").json()
        assert [r["id"] for r in records] == ["1", "2", "3"]
        assert list(records[0]) == list(SHAPES["todos"])


def test_empty_lists(http: requests.Session) -> None:
    """empty: [] with X-Total-Count: 0."""
    with fault_server("empty") as server:
        response = get(http, server, "/users?_page=1")
        assert response.json() == []
        assert response.headers["X-Total-Count"] == "0"


def test_bad_utf8_inside_a_string(http: requests.Session) -> None:
    """bad-utf8: the JSON body holds bytes that are not UTF-8."""
    with fault_server("bad-utf8") as server:
        response = get(http, server, "/users")
        assert response.status_code == 200
        with pytest.raises(UnicodeDecodeError):
            response.content.decode("utf-8")
        assert response.content.decode("utf-8", "replace").startswith('[{"id":1,"name":"')


def test_4xx_answers_the_status_asked_for(http: requests.Session) -> None:
    """4xx[:CODE]: a client error with a JSON body (404 by default)."""
    with fault_server("4xx") as server:
        assert get(http, server, "/users?_page=1").status_code == 404
    with fault_server("4xx:410") as server:
        response = get(http, server, "/users?_page=1")
        assert response.status_code == 410
        assert response.json() == {"error": "placeholder-etl injected fault"}


def test_not_a_list_wraps_the_records_in_an_object(http: requests.Session) -> None:
    """not-a-list: valid JSON, but an object instead of the list of records."""
    with fault_server("not-a-list") as server:
        body = get(http, server, "/users?_page=2&_limit=2").json()
        assert body == {"data": make_records("users", 3, 4, 0), "total": "3"}


def test_reverse_serves_each_page_in_descending_id_order(http: requests.Session) -> None:
    """reverse: the right records on each page, last id first."""
    with fault_server("reverse") as server:
        assert ids(get(http, server, "/posts?_page=2&_limit=4")) == [8, 7, 6, 5]


def test_bad_total_is_not_a_number(http: requests.Session) -> None:
    """bad-total: the records are right, X-Total-Count is 'NaN'."""
    with fault_server("bad-total") as server:
        response = get(http, server, "/users?_page=1&_limit=2")
        assert ids(response) == [1, 2]
        assert response.headers["X-Total-Count"] == "NaN"


def test_dup_ids_repeat_the_previous_record_with_a_changed_field(http: requests.Session) -> None:
    """dup-ids: page n > 1 starts with page n-1's last record, which differs from it, so a
    client can tell whether the first or the last occurrence was kept."""
    with make_server(users=10, fault="dup-ids") as server:
        first = get(http, server, "/users?_page=1&_limit=4").json()
        second = get(http, server, "/users?_page=2&_limit=4").json()
        posts = get(http, server, "/posts?_page=3&_limit=2").json()
    assert [r["id"] for r in first] == [1, 2, 3, 4]
    assert [r["id"] for r in second] == [4, 5, 6, 7, 8]
    assert second[0]["name"] == first[3]["name"] + " (repeated)"
    assert {**second[0], "name": first[3]["name"]} == first[3]  # only that field differs
    assert [r["id"] for r in posts] == [4, 5, 6]
    assert posts[0]["title"] == make_record("posts", 4, 0)["title"] + " (repeated)"


@pytest.mark.parametrize(
    ("fault", "kwargs"),
    [
        ("bogus", {}),
        ("4xx:500", {}),
        ("4xx:429.5", {}),
        ("5xx:x", {}),
        ("5xx:-1", {}),
        ("5xx-rate:2", {}),
        ("hang:1", {}),
        ("none", {"fault_resource": "nope"}),
        ("none", {"fault_page": 0}),
    ],
)
def test_invalid_faults_raise_value_error(fault: str, kwargs: dict[str, Any]) -> None:
    """Bad specs are rejected with a message listing the modes."""
    with pytest.raises(ValueError, match="invalid fault") as caught:
        make_server(fault=fault, **kwargs)
    if not kwargs:
        assert "5xx-rate[:P]" in str(caught.value)
        assert "bad-utf8" in str(caught.value)


def test_parse_fault_defaults() -> None:
    """Modes without an argument take their default."""
    assert parse_fault("5xx").arg == 2
    assert parse_fault("429").arg == 1
    assert parse_fault(" SLOW:0.5 ").describe() == {
        "mode": "slow:0.5",
        "resource": None,
        "page": None,
    }


def test_fault_scoped_to_resource_and_page(http: requests.Session) -> None:
    """fault_resource and fault_page limit where faults land (nested routes count as child)."""
    with fault_server("5xx:1", fault_resource="posts", fault_page=2) as server:
        assert get(http, server, "/users?_page=2&_limit=1").status_code == 200
        assert get(http, server, "/posts?_page=1&_limit=5").status_code == 200
        assert get(http, server, "/posts").status_code == 200
        assert get(http, server, "/posts?_page=2&_limit=5").status_code == 503
        assert get(http, server, "/posts?_start=5&_limit=5").status_code == 503
        assert get(http, server, "/users/1/posts?_page=2&_limit=5").status_code == 503
        assert server.stats()["faults_injected"] == 3


def test_control_fault_endpoint_replaces_the_plan(http: requests.Session) -> None:
    """POST /__control/fault swaps the plan; control routes are never faulted."""
    with make_server(users=3) as server:
        posted = http.post(server.url + "/__control/fault", json={"mode": "html"}, timeout=5)
        assert posted.json() == {"mode": "html", "resource": None, "page": None}
        assert get(http, server, "/users").headers["Content-Type"].startswith("text/html")
        assert get(http, server, "/__control/stats").json()["faults_injected"] == 1
        spec = {"mode": "5xx:1", "resource": "todos", "page": 1}
        assert http.post(server.url + "/__control/fault", json=spec, timeout=5).ok
        assert get(http, server, "/users").status_code == 200
        assert get(http, server, "/todos?_limit=2").status_code == 503
        bad = http.post(server.url + "/__control/fault", json={"mode": "nope"}, timeout=5)
        assert bad.status_code == 400
        assert "invalid fault" in bad.json()["error"]
        assert get(http, server, "/__control/fault").json() == {**spec, "mode": "5xx:1"}


# --------------------------------------------------------------------------- stats


def test_stats_count_requests_pages_and_reset(http: requests.Session) -> None:
    """Resource requests by resource and page; control requests are not counted."""
    with make_server(users=3, fault="5xx:1", fault_resource="todos") as server:
        for path in (
            "/users?_page=1&_limit=2",
            "/users?_page=2&_limit=2",
            "/users?_start=2&_limit=2",
            "/users/1",
            "/users/1/posts",
            "/todos?_page=1",
            "/nope",
        ):
            get(http, server, path)
        stats = get(http, server, "/__control/stats").json()
        assert stats == {
            "requests": 7,
            "by_resource": {"users": 4, "posts": 1, "todos": 1},
            "pages": {"users": {"1": 1, "2": 2}, "todos": {"1": 1}},
            "faults_injected": 1,
            "not_modified": 0,
        }
        assert server.stats() == stats
        reset = http.post(server.url + "/__control/reset", timeout=5).json()
        assert reset == {
            "requests": 0,
            "by_resource": {},
            "pages": {},
            "faults_injected": 0,
            "not_modified": 0,
        }
        assert get(http, server, "/todos?_page=1").status_code == 503  # counters zeroed too


def test_the_request_log_has_every_resource_request_with_its_arrival_time(
    http: requests.Session,
) -> None:
    """GET /__control/log: path, resource, page and arrival time, in order; reset clears it."""
    with make_server(users=3, latency=0.2) as server:
        started = time.time()
        get(http, server, "/users?_page=2&_limit=1")
        get(http, server, "/__control/stats")
        get(http, server, "/users/1/posts")
        log = get(http, server, "/__control/log").json()
        assert [(e["path"], e["resource"], e["page"]) for e in log] == [
            ("/users?_page=2&_limit=1", "users", 2),
            ("/users/1/posts", "posts", None),
        ]
        assert started <= log[0]["t"] < started + 0.2  # on arrival, before the latency
        assert log[1]["t"] - log[0]["t"] >= 0.2  # the first answer came after its latency
        assert server.log() == log
        http.post(server.url + "/__control/reset", timeout=5)
        assert get(http, server, "/__control/log").json() == []


# --------------------------------------------------------------------------- scale and processes


def test_a_million_users_last_page(http: requests.Session) -> None:
    """1,000,000 users: the last page is computed, not scanned (its speed: benchmarks/)."""
    with make_server(users=1_000_000) as server:
        response = get(http, server, "/users?_page=1000&_limit=1000")
        assert ids(response) == list(range(999_001, 1_000_001))
        assert response.headers["X-Total-Count"] == "1000000"
        photos = get(http, server, "/albums/10000000/photos")
        assert ids(photos) == list(range(499_999_951, 500_000_001))


def test_cli_serves_a_million_users_with_flat_memory(http: requests.Session) -> None:
    """``placeholder-api --port 0`` prints its URL; memory stays small."""
    cmd = [sys.executable, "-m", "placeholder_api", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--users", "1000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"serving 1000000 users on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        url = match.group(1)
        http.get(url + "/users/1", timeout=TIMEOUT).raise_for_status()
        before = psutil.Process(proc.pid).memory_info().rss
        for path in ("/users?_page=1000&_limit=1000", "/photos?_page=499999&_limit=1000"):
            assert len(http.get(url + path, timeout=TIMEOUT).json()) == 1000
        grown = psutil.Process(proc.pid).memory_info().rss - before
        assert grown < 30 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_bundled_server_runs_a_subprocess_and_stops_it(http: requests.Session) -> None:
    """bundled_server() yields a working URL and takes the process down on exit."""
    with bundled_server(users=2, seed=1, fault="5xx:1", fault_resource="users") as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        assert http.get(url + "/users", timeout=TIMEOUT).status_code == 503
        assert len(http.get(url + "/users", timeout=TIMEOUT).json()) == 2
        assert http.get(url + "/posts/1", timeout=TIMEOUT).json() == make_record("posts", 1, 1)
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/users", timeout=TIMEOUT)


def test_bundled_server_reports_start_failures() -> None:
    """A server that cannot start raises RuntimeError with its stderr; bad faults fail early."""
    failing = bundled_server(users=-1)
    with pytest.raises(RuntimeError, match="exited before listening") as caught, failing:
        pass
    assert "users" in str(caught.value)
    with pytest.raises(ValueError, match="invalid fault"), bundled_server(fault="explode"):
        pass


def _serving_process(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Start ``python -m placeholder_api ARGS``; return the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "placeholder_api", "--port", "0", *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+)", line)
    assert match, line
    return proc, match.group(1)


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], {"127.0.0.1"}), (["--host", "0.0.0.0"], {"0.0.0.0"})],
    ids=["default-loopback", "asked-for-all-interfaces"],
)
def test_api_server_loopback(args: list[str], expected: set[str]) -> None:
    """Read the real listening sockets: the default binds 127.0.0.1 only (and the check
    sees it when told to bind every interface)."""
    proc, url = _serving_process(args)
    try:
        requests.get(url + "/users/1", timeout=TIMEOUT).raise_for_status()
        listening = listening_sockets({proc.pid})
        assert {ip for ip, _ in listening} == expected
        assert str(urlsplit(url).port) in {str(port) for _, port in listening}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def test_bundled_server_loopback() -> None:
    """The subprocess ``bundled_server`` starts listens on 127.0.0.1 only."""
    me = psutil.Process()
    with bundled_server(users=2) as url:
        children = [c for c in me.children() if "placeholder_api" in " ".join(c.cmdline())]
        (server,) = children
        listening = listening_sockets({server.pid})
        assert listening == {("127.0.0.1", urlsplit(url).port)}


def test_pages_carry_a_weak_etag_and_a_match_gets_304_without_a_body() -> None:
    """As json-server (Express): ``W/"<length hex>-<sha1 base64>"`` over the body's bytes."""
    import base64
    import hashlib

    with make_server(users=20) as server:
        url = f"{server.url}/users?_page=1&_limit=5"
        first = requests.get(url, timeout=10)
        tag = first.headers["ETag"]
        digest = base64.b64encode(hashlib.sha1(first.content).digest()).decode()[:27]
        assert tag == f'W/"{len(first.content):x}-{digest}"'
        again = requests.get(url, headers={"If-None-Match": tag}, timeout=10)
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", tag)
        other = requests.get(f"{server.url}/users?_page=2&_limit=5", headers={"If-None-Match": tag})
        assert other.status_code == 200
        assert other.json()[0]["id"] == 6
        assert other.headers["ETag"] != tag
        assert server.stats()["not_modified"] == 1
    with make_server(users=20, seed=1) as changed:  # other data: the old tag no longer matches
        assert requests.get(url.replace(server.url, changed.url), headers={"If-None-Match": tag}).ok


def test_the_stale_304_fault_answers_every_conditional_request_304() -> None:
    with make_server(users=20, seed=1, fault="stale-304") as server:
        url = f"{server.url}/users?_page=1&_limit=5"
        assert requests.get(url, headers={"If-None-Match": 'W/"0-old"'}).status_code == 304
        assert requests.get(url).status_code == 200  # an unconditional request gets the page
        assert server.stats()["faults_injected"] == 1
