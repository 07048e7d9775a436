"""placeholder-api: a JSONPlaceholder-compatible test server over generated data, with faults.

A package of its own (it does not import placeholder_etl): the pipeline's tests, notebooks,
``make run`` and the benchmarks talk to it over HTTP as they would to the real API.

- :func:`~placeholder_api.server.make_server` — a server in this process (``with`` serves it
  from a thread);
- :func:`~placeholder_api.server.bundled_server` — the server in a subprocess, yielding its URL;
- ``placeholder-api`` (``python -m placeholder_api``) — the server in the foreground.
"""

from placeholder_api.server import FAULT_MODES, ApiServer, bundled_server, make_server, serve

__all__ = ["FAULT_MODES", "ApiServer", "bundled_server", "make_server", "serve"]
