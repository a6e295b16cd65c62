# Copyright: (c) 2026, GPU Lab Fleet maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which of a role's Debian packages are not installed, from dpkg's own status database.

The roles ask `dpkg-query -W -f '${db:Status-Status} ${Package}\\n' PKG...` (read-only, no apt lists
opened) and run ansible.builtin.apt, with its `update_cache`, only for a run that has something to
install: apt's `cache_valid_time` compares against the mtime of /var/lib/apt/lists, which an update
that fetches nothing new leaves as it was, so every no-op run refreshed the lists from the mirrors.
"""

from __future__ import annotations


def missing(dpkg_query_output: str, wanted: list[str]) -> list[str]:
    """The names in `wanted` (in order, once each) that the output does not list as installed.

    A name dpkg does not know is missing (dpkg-query prints nothing for it on stdout); so is any
    name that is not a plain package name (`foo=1.2`, `foo:i386`, a glob): apt decides about those.
    """
    installed = set()
    for line in dpkg_query_output.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "installed":
            installed.add(fields[1])
    out: list[str] = []
    for name in wanted:
        if name not in installed and name not in out:
            out.append(name)
    return out
