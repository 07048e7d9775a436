"""The compiled page path on pages the bundled API serves, faults included (see
tests/unit/test_fastpath.py for the rule every page is checked against)."""

from __future__ import annotations

import urllib.request

import pytest

from placeholder_api.server import make_server
from tests.unit.test_fastpath import RESOURCES, check


@pytest.mark.parametrize("resource", RESOURCES)
def test_pages_from_the_bundled_server(resource):
    with make_server(users=30) as server:
        for page in (1, 2, 3):
            url = f"{server.url}/{resource}?_page={page}&_limit=100"
            with urllib.request.urlopen(url) as response:
                body = response.read()
            for keep in (False, True):
                check(resource, body, keep, fast=True)


def test_server_formula_fault_pages():
    with make_server(users=20, fault="formula") as server:
        for resource in RESOURCES:
            with urllib.request.urlopen(f"{server.url}/{resource}?_page=1&_limit=200") as r:
                body = r.read()
            assert any(c in body for c in (b'"=', b'"+', b'"-', b'"@'))
            for keep in (False, True):
                check(resource, body, keep, fast=True)


def test_server_huge_fault_pages():
    with make_server(users=5, fault="huge:300000") as server:
        for resource in RESOURCES:
            with urllib.request.urlopen(f"{server.url}/{resource}?_page=1&_limit=20") as r:
                check(resource, r.read(), fast=True)


def test_server_extra_field_fault_pages():
    with make_server(users=20, fault="extra-field") as server:
        for resource in RESOURCES:
            with urllib.request.urlopen(f"{server.url}/{resource}?_page=1&_limit=200") as r:
                body = r.read()
            assert b"nickname" in body
            check(resource, body, fast=True)


def test_server_drift_fault_pages_are_rejected():
    for fault in ("drift", "drift-type"):
        with make_server(users=20, fault=fault) as server:
            for resource in RESOURCES:
                with urllib.request.urlopen(f"{server.url}/{resource}?_page=1&_limit=50") as r:
                    old, _ = check(resource, r.read(), fast=False)
                assert old is None
