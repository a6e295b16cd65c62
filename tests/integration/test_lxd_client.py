"""plugins/module_utils/lxd.py against the real LXD daemon: many operations at once."""

from __future__ import annotations

import uuid

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils.lxd import MAX_THREADS, Lxd
from tests.fixtures.lxd import delete_instances, launch

pytestmark = pytest.mark.lxd


@pytest.fixture(scope="module")
def container(lxd_client):
    """One running container to exec in (named and removed by this module)."""
    name = f"t-client-{uuid.uuid4().hex[:6]}"
    launch(lxd_client, name)
    yield name
    assert not delete_instances(lxd_client, lambda n: n == name)


def test_exec_all_keeps_results_of_more_operations_than_waiters(container):
    # MAX_THREADS slow commands then a fast one. LXD forgets a finished operation ~5 s after it ends:
    # had the fast one been submitted up front, it would be gone ("Operation not found") by the time
    # a waiter is free for it. Every result must be there, with its own output.
    commands = {f"slow{i}": (container, ["sh", "-c", f"sleep 7; echo slow{i}"], None) for i in range(MAX_THREADS)}
    commands["fast"] = (container, ["sh", "-c", "echo fast; echo err >&2; exit 3"], None)
    results = Lxd().exec_all(commands)
    assert results["fast"] == (3, "fast\n", "err\n")
    for i in range(MAX_THREADS):
        assert results[f"slow{i}"] == (0, f"slow{i}\n", ""), results[f"slow{i}"]


def test_run_all_reports_each_failure_by_key(container):
    path = f"instances/{container}/snapshots"
    errors = Lxd().run_all({
        "ok": ("post", path, {"name": "client-snap"}),
        "dup": ("post", path, {"name": "client-snap"}),
        "missing": ("post", "instances/t-client-no-such/snapshots", {"name": "x"}),
    }, sequential=True)  # fmt: skip
    assert set(errors) == {"dup", "missing"}, errors
    assert "not found" in errors["missing"].lower()
