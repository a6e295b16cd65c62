"""The shell scripts lxd_workstations runs inside every workstation (its digest and its provisioning)
pass shellcheck as POSIX sh and parse in dash, the /bin/sh of the image.

SC2016 is off: their single-quoted parts are scripts for a nested `sh -c` (run as the member, for an
NFS home), meant to expand there and not here."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from ansible_collections.gpulab.fleet.plugins.module_utils import workstations

SCRIPTS = {"digest": workstations.DIGEST_SCRIPT, "provision": workstations.PROVISION_SCRIPT}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_inside_script_passes_shellcheck_and_dash(tmp_path, name):
    script = tmp_path / f"{name}.sh"
    script.write_text("#!/bin/sh\n" + SCRIPTS[name])
    assert shutil.which("shellcheck"), "shellcheck is missing (scripts/apt-packages.txt installs it)"
    check = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2016", str(script)], capture_output=True, text=True,
                           check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    parse = subprocess.run(["dash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert parse.returncode == 0, parse.stderr
