"""Root conftest: loads every backend fixture plugin found in tests/fixtures/."""

from pathlib import Path

# Each tests/fixtures/<name>.py is a pytest plugin owning one real backend (lxd, slapd, netns, testvm).
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if not p.name.startswith("_")
)
