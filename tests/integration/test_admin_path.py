"""The admin's path of docs/admin-guide.md on the controller, with the installed collection only.

Each test runs the guide's commands as written there, from a lab folder made like the guide makes it:
the built tarball installed with `ansible-galaxy collection install -p collections`, the example
inventory copied out of the INSTALLED collection, and no environment variable pointing at this
checkout (the folder's own ansible.cfg finds the collection). The converge of a real lab with the
installed collection is molecule `lab` (scripts/ci/test.sh installs the tarball for it).

Guide step -> test:
  install the tarball, copy the example           -> lab (fixture), test_installed_playbooks_resolve
  check the inventory (preflight)                 -> test_the_example_as_shipped_is_refused_readably
  secrets with ansible-vault                      -> test_missing_vault_file_is_refused,
                                                     test_a_vaulted_password_passes
  build the workstation image                     -> test_build_image_names_the_dev_scripts_tarball
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile

import pytest

from tests.helpers import PLAYBOOKS, ROOT, VENV_BIN

VAULT_FILE = "group_vars/directory/vault.yml"


def admin_env() -> dict:
    """The admin's shell: the venv's ansible on PATH, nothing pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def sh(folder, *argv, ok=True, timeout=300):
    proc = subprocess.run([str(VENV_BIN / argv[0]), *argv[1:]], cwd=folder, env=admin_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"{argv} failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    sh(ROOT, "ansible-galaxy", "collection", "build", "--output-path", str(dist), str(ROOT))
    [built] = dist.glob("gpulab-fleet-*.tar.gz")
    return built


@pytest.fixture
def lab(tmp_path, tarball):
    """~/mylab as the guide makes it: the collection installed into it, the example copied from there."""
    folder = tmp_path / "mylab"
    folder.mkdir()
    sh(folder, "ansible-galaxy", "collection", "install", "--force", "-p", "collections", str(tarball))
    installed = folder / "collections/ansible_collections/gpulab/fleet"
    shutil.copytree(installed / "inventories/example", folder, dirs_exist_ok=True)
    return folder


def test_the_artifact_ships_the_lab_folder_config_not_the_checkouts(tarball):
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    assert "inventories/example/ansible.cfg" in names
    assert "ansible.cfg" not in names  # the checkout's: its collections path is .build/collections
    assert "roles/workstation_image/files/recipe/build.sh" in names
    assert "playbooks/build_image.yml" in names


def test_installed_playbooks_resolve(lab):
    for playbook in PLAYBOOKS:
        sh(lab, "ansible-playbook", f"gpulab.fleet.{playbook}", "--syntax-check")
    listed = sh(lab, "ansible-galaxy", "collection", "list", "gpulab.fleet")
    assert str(lab / "collections") in listed.stdout, listed.stdout


def test_the_example_as_shipped_is_refused_readably(lab):
    """The placeholder password stops the preflight; the lab folder's ansible.cfg prints the problems one
    per line (not one escaped JSON line)."""
    run = sh(lab, "ansible-playbook", "gpulab.fleet.preflight", "--skip-tags", "gpus", ok=False)
    assert run.returncode != 0
    lines = run.stdout.splitlines()
    problem = "nas1 (group directory): directory_admin_pw is still a placeholder (it contains 'change-me')"
    assert any(line.strip().startswith(problem) for line in lines), run.stdout
    assert "\\n" not in run.stdout, run.stdout


def test_missing_vault_file_is_refused(lab):
    (lab / VAULT_FILE).unlink()
    run = sh(lab, "ansible-playbook", "gpulab.fleet.preflight", "--skip-tags", "gpus", ok=False)
    assert run.returncode != 0
    assert "nas1 (group directory): directory_admin_pw cannot be read" in run.stdout, run.stdout
    assert "vault_directory_admin_pw" in run.stdout, run.stdout


def test_a_vaulted_password_passes(lab):
    """The positive twin: a real password, encrypted as the guide says, passes with the vault password."""
    (lab / VAULT_FILE).write_text("vault_directory_admin_pw: 'a real one, 24 characters'\n")
    password = lab.parent / "vault-password"
    password.write_text("correct horse battery staple\n")
    password.chmod(0o600)
    sh(lab, "ansible-vault", "encrypt", VAULT_FILE, "--vault-password-file", str(password))
    assert (lab / VAULT_FILE).read_text().startswith("$ANSIBLE_VAULT;")
    refused = sh(lab, "ansible-playbook", "gpulab.fleet.preflight", "--skip-tags", "gpus", ok=False)
    assert refused.returncode != 0 and "vault" in (refused.stdout + refused.stderr).lower()
    run = sh(lab, "ansible-playbook", "gpulab.fleet.preflight", "--skip-tags", "gpus",
             "--vault-password-file", str(password))  # fmt: skip
    assert re.search(r"localhost\s+: ok=1\s+changed=0\s+unreachable=0\s+failed=0", run.stdout), run.stdout


def test_build_image_names_the_dev_scripts_tarball(lab):
    """The recipe in the artifact is the dev scripts' recipe: both name the same cached tarball."""
    dev = subprocess.run(["bash", str(ROOT / "roles/workstation_image/files/recipe/build.sh"), "--path"],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert dev.returncode in (0, 3), dev.stderr
    run = sh(lab, "ansible-playbook", "gpulab.fleet.build_image", "--check")
    assert f"fleet_image_src: {dev.stdout.strip()}" in run.stdout, run.stdout
    if dev.returncode == 0:  # built already (CI's set-up does): its temporary copy of the recipe is no change
        assert re.search(r"localhost\s+: ok=\d+\s+changed=0\s", run.stdout), run.stdout
