"""Importing the package changes nothing global: log filters, Arrow's pool, sys.modules."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = r"""
import json, logging, sys
import pyarrow as pa

def filters():
    loggers = [logging.getLogger()] + [
        logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
    ]
    # this package's filters (Prefect adds its own to the loggers it creates)
    return {
        l.name: len(mine)
        for l in loggers
        if (mine := [f for f in l.filters if type(f).__module__.startswith("placeholder_etl")])
    }

before_filters, pool = filters(), pa.default_memory_pool().backend_name
before = dict(sys.modules)
import placeholder_etl, placeholder_etl.flow, placeholder_etl.cli, placeholder_etl.tasks
import placeholder_etl.core.client, placeholder_etl.core.fastpath
loaded = [name for name in sys.modules if name not in before]
# every new entry is a module that was imported, none a stand-in such as None
stand_ins = [name for name in loaded if not hasattr(sys.modules[name], "__name__")]
changed = {k: v for k, v in filters().items() if before_filters.get(k, 0) != v}
print(json.dumps({
    "filters": changed,
    "pool": [pool, pa.default_memory_pool().backend_name],
    "stand_ins": stand_ins,
}))
from placeholder_etl.runtime import prepare_process
prepare_process(); prepare_process()
print(json.dumps({"filters": {k: v for k, v in filters().items() if before_filters.get(k, 0) != v},
                  "pool": pa.default_memory_pool().backend_name,
                  "rfc": "rfc3987_syntax" in sys.modules}))
"""


def test_importing_the_package_changes_nothing_global_until_a_run_prepares() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    imported, prepared = json.loads(out[-2]), json.loads(out[-1])
    assert imported["filters"] == {}
    assert imported["pool"][0] == imported["pool"][1]
    assert imported["stand_ins"] == []
    # prepare_process applies them, once however often it is called
    assert prepared["filters"] == {"urllib3.connectionpool": 1, "prefect.task_runs": 1}
    assert prepared["pool"] == "system"
    assert prepared["rfc"]
