"""gpulab.fleet.ssh_config_snippets through ansible-playbook (an action plugin: it only runs there),
writing into a temporary folder on this controller."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import VENV_BIN, ansible_env, run_task

ALICE = "Host lab-alice\n    HostName gpu1\n    Port 20010\n    User alice\n"
BOB = "Host lab-bob\n    HostName gpu1\n    Port 20020\n    User bob\n"


def snippets(dest, check=False, **args):
    return run_task({"gpulab.fleet.ssh_config_snippets": {"dest": str(dest), **args}}, check=check)


def test_write_idempotence_check_mode_and_removal(tmp_path):
    dest = tmp_path / "ssh"
    first = snippets(dest, snippets={"alice": ALICE, "bob": BOB})
    assert first["changed"] and sorted(first["written"]) == [str(dest / "alice.conf"), str(dest / "bob.conf")]
    assert (dest / "alice.conf").read_text() == ALICE and oct((dest / "bob.conf").stat().st_mode & 0o777) == "0o644"
    assert [d["after"] for d in first["diff"]] == [ALICE, BOB]

    assert snippets(dest, snippets={"alice": ALICE, "bob": BOB})["changed"] is False

    new_alice = ALICE.replace("20010", "20030")
    check = snippets(dest, check=True, snippets={"alice": new_alice}, remove=["bob"])
    assert check["changed"] and check["written"] == [str(dest / "alice.conf")]
    assert check["removed"] == [str(dest / "bob.conf")]
    assert (dest / "alice.conf").read_text() == ALICE and (dest / "bob.conf").exists()

    done = snippets(dest, snippets={"alice": new_alice}, remove=["bob", "carol"])
    assert done["changed"] and (dest / "alice.conf").read_text() == new_alice and not (dest / "bob.conf").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["alice.conf"]  # no temporary files left
    assert snippets(dest, snippets={"alice": new_alice}, remove=["bob"])["changed"] is False


def test_mode_drift_is_repaired(tmp_path):
    snippets(tmp_path, snippets={"alice": ALICE})
    (tmp_path / "alice.conf").chmod(0o600)
    assert snippets(tmp_path, snippets={"alice": ALICE})["changed"] is True
    assert (tmp_path / "alice.conf").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"snippets": {"../evil": ALICE}}, "snippets: '../evil' is not a safe file name"),
        ({"snippets": {"alice": ALICE}, "remove": ["alice"]}, "remove: 'alice' is also in snippets"),
        ({"snippets": {"alice": ALICE}, "mode": "rw-r--r--"}, "mode: 'rw-r--r--' is not an octal file mode"),
        ({"snippets": {"alice": ALICE}, "remove": [".ssh"]}, "remove: '.ssh' is not a safe file name"),
    ],
)
def test_bad_input_fails_before_any_change(tmp_path, args, message):
    (tmp_path / "bob.conf").write_text(BOB)
    result = snippets(tmp_path, **args)
    assert result["failed"] and message in result["msg"], result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bob.conf"]


def test_docs_render():
    proc = subprocess.run([str(VENV_BIN / "ansible-doc"), "gpulab.fleet.ssh_config_snippets"], capture_output=True,
                          text=True, env=ansible_env(), check=False)  # fmt: skip
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    for text in ("snippets", "remove", "EXAMPLES", "RETURN VALUES"):
        assert text in proc.stdout
