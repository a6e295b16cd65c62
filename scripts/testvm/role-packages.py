"""Print the Debian packages the collection's roles install on a lab host, one per line, sorted.

The test VM image (build.sh) pre-installs them: under software emulation an install at converge
costs minutes (python3-pylxd alone byte-compiles ~40 Python packages), while the roles' apt tasks
still run and check them. Read from the roles' defaults, so a role's list is written once; this
output is part of the image's cache key (lib.sh), so changing a list rebuilds the image.
Run with a Python that has PyYAML (the project's .venv).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROLES = Path(__file__).resolve().parents[2] / "roles"
# role -> its variables that list packages for a host without GPUs (the NVIDIA driver is never baked in).
PACKAGE_VARS = {
    "common": ["common_packages"],
    "directory": ["directory_packages"],
    "gpu_host": ["gpu_host_lxd_packages"],
    "storage_server": ["storage_server_packages"],
}


def main() -> int:
    packages: set[str] = set()
    for role, names in PACKAGE_VARS.items():
        defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text(encoding="utf-8"))
        for name in names:
            value = defaults.get(name)
            if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
                print(f"role-packages: {role}'s {name} is not a list of package names: {value!r}", file=sys.stderr)
                return 1
            packages.update(value)
    print("\n".join(sorted(packages)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
