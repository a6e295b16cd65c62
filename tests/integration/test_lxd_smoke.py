"""The LXD test backend works end to end: the image boots systemd, gets DHCP on lxdbr0, and sshd
accepts exactly the key we pushed."""

from __future__ import annotations

import io
import ipaddress
import json
import secrets
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.fixtures.lxd import InstanceNames, launch, ssh, wait_ipv4, wait_systemd

pytestmark = pytest.mark.lxd

LXD_UP = Path(__file__).resolve().parents[2] / "scripts" / "lxd-up.sh"


def bridge_subnet(client, bridge: str = "lxdbr0") -> ipaddress.IPv4Network:
    return ipaddress.ip_interface(client.networks.get(bridge).config["ipv4.address"]).network


def test_image_carries_recipe_hash(lxd_client, lxd_image):
    image = lxd_client.images.get_by_alias(lxd_image)
    recipe = image.properties.get("gpulab.recipe", "")
    assert len(recipe) == 16
    assert image.properties["os"] == "debian"


def test_container_boots_gets_ip_and_accepts_ssh_key(lxd_client, lxd_image, lxd_names, ssh_keypair, tmp_path):
    name = lxd_names()
    inst = launch(lxd_client, name, image=lxd_image)

    assert wait_systemd(lxd_client, name, timeout=120) == "running"
    ip = wait_ipv4(lxd_client, name, timeout=60)
    assert ipaddress.ip_address(ip) in bridge_subnet(lxd_client)

    key, public = ssh_keypair
    inst.files.put("/root/.ssh/authorized_keys", public + "\n", mode="0600", uid=0, gid=0)

    res = ssh(ip, "root", key, "id -u; hostname")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", name]

    # A key that was never pushed is refused (BatchMode: no password fallback).
    wrong = tmp_path / "wrong"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    res = ssh(ip, "root", wrong, "id -u")
    assert res.returncode == 255
    assert "Permission denied" in res.stderr


def test_lxd_names_teardown_removes_renamed_instances(lxd_client, lxd_image):
    """The cleanup contract other tests rely on: handed-out names and anything derived from them go."""
    names = InstanceNames()
    a, b = names(), names()
    assert a != b and len(a) <= 63
    assert names.owns(a) and names.owns(f"{b}-archived-20260101")
    assert not names.owns(f"x{a}")

    # Really create one under a derived name and check the fixture's rule would find it.
    derived = f"{a}-archived"
    launch(lxd_client, derived, image=lxd_image, start=False)
    try:
        found = [i.name for i in lxd_client.instances.all() if names.owns(i.name)]
        assert found == [derived]
    finally:
        lxd_client.instances.get(derived).delete(wait=True)


def test_bridge_is_private_and_nat(lxd_client):
    cfg = lxd_client.networks.get("lxdbr0").config
    assert bridge_subnet(lxd_client).is_private
    assert cfg["ipv4.nat"] == "true"
    assert cfg.get("ipv6.address") == "none"
    info = json.loads(subprocess.run(["lxc", "query", "/1.0"], capture_output=True, text=True, check=True).stdout)
    assert info["config"].get("images.auto_update_interval") == "0"


def _tiny_image(recipe: str) -> bytes:
    """A minimal unified image tarball carrying a (stale) gpulab.recipe property."""
    meta = f"architecture: x86_64\ncreation_date: 1\nproperties:\n  gpulab.recipe: {recipe}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("metadata.yaml")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
        rootfs = tarfile.TarInfo("rootfs")
        rootfs.type = tarfile.DIRTYPE
        tar.addfile(rootfs)
    return buf.getvalue()


@pytest.mark.parametrize("existing", ["stale", "missing"])
def test_lxd_up_points_alias_at_current_recipe(lxd_client, lxd_image, existing):
    """lxd-up.sh moves an alias whose image has another recipe (and deletes that image), or creates it."""
    alias = f"gpulab/t-{secrets.token_hex(3)}"
    current = lxd_client.images.get_by_alias(lxd_image)
    stale = None
    if existing == "stale":
        stale = lxd_client.images.create(_tiny_image("0000000000000000"), wait=True)
        stale.add_alias(alias, "")
    try:
        res = subprocess.run(
            ["bash", str(LXD_UP)], capture_output=True, text=True, check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXD_IMAGE_ALIAS": alias},
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "importing" in res.stdout
        assert lxd_client.images.get_by_alias(alias).fingerprint == current.fingerprint
        if stale is not None:
            assert not lxd_client.images.exists(stale.fingerprint)
        # The real alias is untouched.
        assert lxd_client.images.get_by_alias(lxd_image).fingerprint == current.fingerprint
    finally:
        if lxd_client.images.exists(alias, alias=True):
            lxd_client.api.images.aliases[alias].delete()
        if stale is not None and lxd_client.images.exists(stale.fingerprint):
            stale.delete(wait=True)
