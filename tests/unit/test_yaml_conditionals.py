"""Every conditional in the collection's YAML is a string (or a boolean) once YAML has read it.

An unquoted `- x | select('search', '^dn: uid=') | list` is a YAML mapping, not an expression, because of
the `': '` inside it; ansible-lint passes it and Ansible fails only when the task runs ("Conditional
expressions must be strings"). That cost one whole CI run at the end of molecule lab, so it is checked
here, in a second, over every playbook, role and molecule file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

CONDITIONAL_KEYS = {"that", "when", "changed_when", "failed_when", "until"}
FILES = sorted(p for d in ("playbooks", "roles", "molecule") for p in (ROOT / d).rglob("*.yml"))


def non_string_conditionals(node, where: str = ""):
    """Yield (path, value) for each conditional under NODE that is neither a string nor a boolean."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in CONDITIONAL_KEYS:
                for item in value if isinstance(value, list) else [value]:
                    if not isinstance(item, (str, bool)):
                        yield f"{where}/{key}", item
            yield from non_string_conditionals(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from non_string_conditionals(item, f"{where}[{i}]")


def test_files_found():
    assert len(FILES) > 20


def test_the_check_finds_the_mistake():
    doc = yaml.safe_load("- assert:\n    that:\n      - x | select('search', '^dn: uid=') | list\n")
    assert [path for path, _value in non_string_conditionals(doc)] == ["[0]/assert/that"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_conditionals_are_strings(path: Path):
    found = [(where, item) for doc in yaml.safe_load_all(path.read_text()) for where, item in
             non_string_conditionals(doc)]  # fmt: skip
    assert not found, f"{path.relative_to(ROOT)}: quote these conditionals: {found}"
