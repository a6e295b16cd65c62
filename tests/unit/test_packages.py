"""Which packages a role still has to install, from dpkg-query's recorded real output."""

from ansible_collections.gpulab.fleet.plugins.module_utils import packages
from tests.helpers import ROOT

LINES = (ROOT / "tests/data/dpkg/query_status.txt").read_text().splitlines(True)
RECORDED = "".join(line for line in LINES if not line.startswith("#"))


def test_installed_ones_are_not_missing_unknown_and_not_installed_ones_are():
    wanted = ["bash", "nano", "rsync", "no-such-package-gpulab", "libc6"]
    assert packages.missing(RECORDED, wanted) == ["nano", "no-such-package-gpulab"]


def test_nothing_missing_and_duplicates_once():
    assert packages.missing(RECORDED, ["bash", "libc6", "rsync"]) == []
    assert packages.missing("", ["nano", "nano"]) == ["nano"]


def test_names_that_are_not_plain_package_names_are_left_to_apt():
    assert packages.missing(RECORDED, ["bash=5.2.15-2+b7", "libc6:i386"]) == ["bash=5.2.15-2+b7", "libc6:i386"]
