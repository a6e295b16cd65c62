"""lxd_workstations' `unlisted` against the real LXD daemon: a workstation that no item names (a member
deleted from the inventory instead of set to state absent) is reported, and archived only when asked.

In a file of its own: `unlisted: archive` archives every managed workstation of this LXD that the call
does not name, so it must run where no other test keeps one (the module-scoped workstations of
test_lxd_workstations.py are gone once that file's tests end). Test user uid: 20081.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.lxd import LXD_IMAGE
from tests.helpers import run_module

pytestmark = pytest.mark.lxd


def test_a_workstation_of_nobody_listed_is_reported_then_archived_when_asked(lxd_client, lxd_names):
    name, kept = lxd_names(), lxd_names()
    items = [
        {"name": n, "user": {"name": user, "uid": uid}, "state": "stopped"}
        for n, user, uid in ((name, "erin", 20081), (kept, "finn", 20082))
    ]
    assert run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": items})["changed"] is True

    def without_erin(unlisted, check=False):
        args = {"image": LXD_IMAGE, "workstations": [items[1]], "unlisted": unlisted}
        return run_module("lxd_workstations", args, check=check)

    # the module's default (calls that name only some workstations): reported in the result, nothing else
    r = without_erin("ignore")
    assert r["changed"] is False and name in r["unlisted"] and kept not in r["unlisted"], r
    assert name not in json.dumps(r.get("warnings", []))  # 2.19: WarningSummary dicts around the message
    # the role's default: a warning naming her, nothing changed
    r = without_erin("warn")
    assert r["changed"] is False and name in r["unlisted"], r
    warned = json.dumps(r.get("warnings", []))
    assert "belong to no listed user: " in warned and name in warned, warned
    assert lxd_client.instances.exists(name)

    foreign = [n for n in r["unlisted"] if not lxd_names.owns(n)]
    if foreign:
        pytest.skip(f"this LXD holds workstations no test made ({', '.join(foreign)}): archive would take them too")
    r = without_erin("archive", check=True)
    assert r["changed"] is True and [w["actions"] for w in r["workstations"] if w["name"] == name] == [["archive"]]
    assert lxd_client.instances.exists(name)
    r = without_erin("archive")
    assert r["failed"] is False, r.get("msg")
    archived = next(w["archived_as"] for w in r["workstations"] if w["name"] == name)
    assert not lxd_client.instances.exists(name)
    assert lxd_client.instances.get(archived).config["user.gpulab.archived_from"] == name
    assert lxd_client.instances.get(kept).status == "Stopped"  # the listed one is untouched
    again = without_erin("archive")
    assert again["changed"] is False and again["unlisted"] == [], again  # an archive is not unlisted

    # the positive twin: listed again, she gets a workstation of her own name back
    r = run_module("lxd_workstations", {"image": LXD_IMAGE, "workstations": items, "unlisted": "warn"})
    assert r["changed"] is True and r["unlisted"] == [] and lxd_client.instances.exists(name)
