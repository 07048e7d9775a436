"""A hostile or broken API ends a run quickly, with one clear line that never shows a secret.

Each case runs the command line (``--runner local``) against a server of our own that
misbehaves at the HTTP level (:mod:`tests.hostile`), with a password and an API key in
``--api-url`` and a failure webhook. Each ends by itself within the bound its case states,
exits non-zero, its last line names the resource and says what happened, and the secrets
appear nowhere: not in the terminal, not in the run's logs on the Prefect API, not in the
webhook's body, not in any file under the output and cache dirs.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from placeholder_etl.core.extract import extract_chunk
from placeholder_etl.core.plan import plan_chunks
from placeholder_etl.core.settings import ClientSettings
from placeholder_etl.core.store import Store
from tests.helpers import run_etl, run_logs
from tests.hostile import hostile_server

pytestmark = pytest.mark.usefixtures("prefect_api_url")

PASSWORD, KEY = "s3cretPW", "K5ecretKey"
#: Every form a secret could leak in: as typed, and the Basic header requests builds.
SECRETS = (PASSWORD, KEY, "YWxpY2U6czNjcmV0UFc=")  # base64("alice:s3cretPW")
FAST = (
    *("--page-size", "10", "--request-timeout", "1", "--request-retries", "1"),
    *("--task-retries", "0", "--retry-delay", "0"),
)


def secret_url(root: str) -> str:
    """``root`` with a password and an API key in it."""
    return root.replace("http://", f"http://alice:{PASSWORD}@") + f"/?api_key={KEY}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Case:
    """A failure kind: the server's mode (None: no server), what the last line says, and
    the most seconds the run may take: the command's own start, Prefect's import, the flow
    run and the failure webhook included (5-20 s on a busy 2-core machine)."""

    mode: str | None
    message: str
    bound: float
    options: tuple[str, ...] = ()
    exit_code: int = 1


CASES = {
    "unreachable": Case(
        None,
        r"users count from http://alice:\*\*\*@127\.0\.0\.1:\d+/users\?api_key=\*\*\*&_page=1&"
        r"_limit=1: connection failed \(connection refused\) \(tried 2 times\)",
        45,
    ),
    "body cut short": Case(
        "cut-body",
        r"users page \d+ from http://alice:\*\*\*@127.0.0.1:\d+/users\?api_key=\*\*\*&_page=\d+&"
        r"_limit=10: the response broke off after \d+ bytes, \d+ bytes short of its "
        r"Content-Length \(tried 2 times\)",
        45,
    ),
    "body dripped": Case(
        "drip-body", r"users page \d+ from .*: no answer within 1 s \(tried 2 times\)", 45
    ),
    "headers dripped": Case(
        "drip-headers",
        r"users page \d+ from .*: no answer within 1 s \(tried 2 times\)",
        45,
    ),
    "redirect to file://": Case(
        "redirect-file",
        r"users page \d+ from .*: HTTP 302 redirects to file:///etc/passwd, outside the API "
        r"\(http://127.0.0.1:\d+\)",
        45,
    ),
    "redirect loop": Case(
        "redirect-loop", r"users page \d+ from .*: more than 5 redirects \(a redirect loop\?\)", 45
    ),
    "redirect to another host": Case(
        "redirect-host",
        r"users page \d+ from .*: HTTP 302 redirects to http://127.0.0.1:\d+/users\?api_key=\*\*\*"
        r"&_page=\d+&_limit=10, outside the API \(http://127.0.0.1:\d+\)",
        45,
    ),
    "a total of a trillion": Case(
        "huge-total",
        r"users: the API reports 1,000,000,000,000 records \(X-Total-Count\), more than "
        r"--max-records 10,000,000; nothing was fetched",
        45,
    ),
    "an empty page before the total": Case(
        "empty-after-first",
        r"users page [23] from .*_page=[23]&_limit=10: the page is empty, but the API reported 30 "
        r"records \(X-Total-Count\), so pages up to 3 should hold records",
        45,
    ),
    "pages that ignore _page": Case(
        "ignore-page-total",
        r"users page 2 from .*: the same 10 records as page 1 \(ids 1 to 10\): the API ignores "
        r"_page",
        45,
        ("--pages-per-task", "3"),
    ),
    "an id beyond 64 bits": Case(
        "big-id",
        r"users page \d+ from .*: record id=9223372036854775808 field id: a number outside 64 "
        r"bits",
        45,
    ),
    "a body that does not decode": Case(
        "bad-gzip", r"users page \d+ from .*: the response's Content-Encoding \(gzip\)", 45
    ),
    "an HTML page": Case("html", r"users page \d+ from .*: response is an HTML page, not JSON", 45),
    "401": Case("status", r"users page \d+ from .*: HTTP 401 Unauthorized$", 45),
}


def assert_no_secret(text: str | bytes, where: str) -> None:
    for secret in SECRETS:
        found = secret.encode() in text if isinstance(text, bytes) else secret in text
        assert not found, f"{secret!r} in {where}"


def assert_no_secret_in_files(*folders: Path) -> None:
    for folder in folders:
        for path in folder.rglob("*") if folder.exists() else ():
            if path.is_file():
                assert_no_secret(path.read_bytes(), str(path))


@pytest.mark.parametrize("kind", CASES)
def test_a_hostile_api_fails_the_run_quickly_with_one_clear_line_and_no_secret(
    tmp_path, webhook, kind
) -> None:
    check_hostile_run(tmp_path, webhook, kind, "local")


@pytest.mark.parametrize("kind", ["body cut short", "an id beyond 64 bits"])
def test_no_secret_leaves_dask_worker_processes_either(tmp_path, webhook, kind) -> None:
    """The tasks run in a Dask worker process of their own: it installs the gate too (its
    logs reach the Prefect API and the terminal from there)."""
    check_hostile_run(
        tmp_path, webhook, kind, "dask", "--dask-processes", "--dask-workers", "1", bound=90
    )


def check_hostile_run(
    tmp_path: Path, webhook, kind: str, runner: str, *options: str, bound: float | None = None
) -> None:
    """Run ``kind``'s case on ``runner``; check its bound, last line and every secret."""
    case = CASES[kind]
    bound = bound or case.bound
    out, cache = tmp_path / "out", tmp_path / "cache"
    with hostile_server("ok") as other, hostile_server(case.mode or "ok", other=other.url) as api:
        root = api.url if case.mode else f"http://127.0.0.1:{closed_port()}"
        started = time.monotonic()
        result = run_etl(
            *(secret_url(root), out, *FAST, *case.options, *options),
            *("--notify-webhook", webhook.url),
            cache=cache,
            runner=runner,
            timeout=bound + 30,  # killed (and failed) well past the bound
        )
        took = time.monotonic() - started
    terminal = result.stdout + result.stderr
    assert result.returncode == case.exit_code, terminal[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: " + case.message + ".*", last), last
    assert took < bound, f"{kind}: {took:.1f} s"
    if case.mode:  # the secrets were really sent
        assert api.requests[0]["query"]["api_key"] == KEY
        assert api.requests[0]["auth"] == f"Basic {SECRETS[2]}"
    if kind == "redirect to another host":
        assert other.requests == []
    if kind == "a total of a trillion":
        assert api.data_requests() == []  # refused before any page was fetched

    assert_no_secret(terminal, "the terminal")
    (message,) = webhook.wait_for(1, timeout=10)
    assert_no_secret(message["text"], "the webhook body")
    assert last.removeprefix("error: ") in message["text"]
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", message["text"])[1]
    logs = run_logs(flow_run_id)
    assert "Beginning flow run" in logs
    assert_no_secret(logs, "the run's logs on the Prefect API")
    assert_no_secret_in_files(out, cache)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            f"http://alice:{PASSWORD}@127.0.0.1:99999/?api_key={KEY}",
            (
                r"--api-url: http://alice:\*\*\*@127\.0\.0\.1:99999/\?api_key=\*\*\* is not a valid "
                r"URL \(Port out of range 0-65535\)"
            ),
        ),
        (
            f"htp://alice:{PASSWORD}@127.0.0.1:3000/?api_key={KEY}",
            (
                r"--api-url: htp://alice:\*\*\*@127\.0\.0\.1:3000/\?api_key=\*\*\*: the API must be an "
                r"http:// or https:// URL"
            ),
        ),
        (
            "localhost:3000",
            r"--api-url: localhost:3000 is not a URL: give its scheme, e.g. http://localhost:3000",
        ),
    ],
)
def test_an_unusable_api_url_is_refused_before_any_work(tmp_path, url, message) -> None:
    """Checked with the other settings: no Prefect run, no request, no file."""
    started = time.monotonic()
    result = run_etl(url, tmp_path / "out", cache=tmp_path / "cache", timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(r"error: " + message, result.stderr.strip().splitlines()[-1])
    assert len((result.stdout + result.stderr).strip().splitlines()) == 1
    assert_no_secret(result.stdout + result.stderr, "the terminal")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "cache").exists()


def test_a_query_in_the_api_url_reaches_the_server_on_every_request(tmp_path, webhook) -> None:
    """An API key in ``--api-url`` is kept on every request (the count and every page, in
    both paging styles) and never shown: the manifest, the terminal, the files."""
    out = tmp_path / "out"
    for paging in ("page", "start"):
        with hostile_server("ok", users=45) as api:
            result = run_etl(
                *(secret_url(api.url), out, "--page-size", "10", "--paging", paging),
                *("--pages-per-task", "2", "--notify-webhook", webhook.url),
                cache=tmp_path / "cache",
                timeout=120,
            )
        assert result.returncode == 0, result.stderr[-3000:]
        queries = [r["query"] for r in api.requests]
        assert len(queries) == 1 + 5  # the count, then 5 pages
        assert all(q.get("api_key") == KEY for q in queries), queries
        assert all(r["auth"] == f"Basic {SECRETS[2]}" for r in api.requests)
        assert all(r["path"] == "/users" for r in api.requests)
        assert_no_secret(result.stdout + result.stderr, "the terminal")
    manifests = sorted(out.glob("manifest_*.json"))
    assert len(manifests) == 2
    assert '"source":"http://alice:***@127.0.0.1:' in manifests[0].read_text().replace(" ", "")
    assert_no_secret_in_files(out, tmp_path / "cache")
    assert webhook.received == []


def test_paging_without_a_total_stops_at_a_repeated_page(tmp_path) -> None:
    """An API that honours ``_limit``, ignores ``_page`` and sends no total: the run stops
    at page 2 (the same records as page 1), says so, and keeps page 1 once."""
    with hostile_server("ignore-page", users=45) as api:
        started = time.monotonic()
        result = run_etl(
            *(api.url, tmp_path / "out", "--page-size", "10", "--in-flight", "4"),
            cache=tmp_path / "cache",
            timeout=90,
        )
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert took < 30
    assert len(api.data_requests()) <= 2 + 4  # pages 1 and 2, and the in-flight window
    assert "users page 2 from" in result.stderr
    assert "the same 10 records as page 1 (ids 1 to 10): the API ignores _page" in result.stderr
    assert "paging stopped there" in result.stderr
    (users,) = (tmp_path / "out").glob("users_2*.csv")
    assert len(users.read_text().splitlines()) == 1 + 10


def test_paging_without_a_total_stops_at_max_records(tmp_path) -> None:
    """No total, and full distinct pages past ``--max-records``: an error naming the page,
    after fetching only the pages the limit allows (and one more to tell)."""
    with hostile_server("no-total", users=1000) as api:
        (spec,) = plan_chunks(api.url, {"users": None}, 10, 1, max_records=50)
        assert spec.max_pages == 5
        cache = Store.open(str(tmp_path / "cache"))
        with pytest.raises(Exception, match=r"users page 6 from .*: more than 50 records") as err:
            extract_chunk(spec, cache, ClientSettings(timeout=2, retries=0), in_flight=2)
        pages = sorted(int(r["query"]["_page"]) for r in api.data_requests())
    assert type(err.value).__name__ == "PermanentError"
    assert pages == [1, 2, 3, 4, 5, 6]


def test_an_api_that_never_answers_fails_within_the_stated_bound(tmp_path) -> None:
    """The README's bound, scaled down: each request tried 1 + 3 times, 1 s each, backoff
    0 + 0.5 + 1 s (+ up to 3 x 0.125 s of jitter); 3 task attempts, 0.2 and 0.4 s apart
    (x1.5 at most). So 3 x (4 x 1 + 1.9) + 0.9 = 18.6 s at most, 12 s at least, plus the
    command's own start and end."""
    with hostile_server("hang") as api:
        started = time.monotonic()
        result = run_etl(
            *(api.url, tmp_path / "out", "--request-timeout", "1", "--request-retries", "3"),
            *("--task-retries", "2", "--retry-delay", "0.2"),
            cache=tmp_path / "cache",
            timeout=120,
        )
        took = time.monotonic() - started
        asked = len(api.requests)
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"error: users count from http://127.0.0.1:\d+/users\?_page=1&_limit=1: no answer "
        r"within 1 s \(tried 4 times\)",
        last,
    ), last
    assert asked == 3 * 4
    assert 12 <= took < 18.6 + 15, took


def test_quiet_prints_only_the_error_line_and_normal_no_traceback(tmp_path) -> None:
    """An unreachable API: ``--quiet`` prints the error line alone; the default prints no
    traceback and no urllib3 retry warning; ``--verbose`` the tracebacks."""
    url = f"http://127.0.0.1:{closed_port()}"
    runs = {
        mode: run_etl(url, tmp_path / mode, *FAST, *flags, cache=tmp_path / "c", timeout=90)
        for mode, flags in (("quiet", ("--quiet",)), ("normal", ()), ("verbose", ("--verbose",)))
    }
    for result in runs.values():
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1].startswith("error: users count from ")
    quiet = (runs["quiet"].stdout + runs["quiet"].stderr).strip().splitlines()
    assert len(quiet) <= 3, quiet
    assert quiet[-1].startswith("error: users count from ")
    normal = runs["normal"].stdout + runs["normal"].stderr
    assert "Traceback" not in normal
    assert "Retrying" not in normal
    assert len(normal.strip().splitlines()) <= 12, normal
    assert "Traceback (most recent call last)" in runs["verbose"].stderr
