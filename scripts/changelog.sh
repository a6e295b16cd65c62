#!/usr/bin/env bash
# CHANGELOG.md from the fragments in changelogs/fragments/ (antsibull-changelog), for the version in
# galaxy.yml; a change adds a fragment, then runs this.
#   scripts/changelog.sh          regenerate changelogs/changelog.yaml and CHANGELOG.md
#   scripts/changelog.sh --check  (make lint) lint the fragments; fail when CHANGELOG.md is not what they make
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')

if [ "${1:-}" != --check ]; then
  # keep_fragments: the coming version's entry is rebuilt from every fragment, new ones included.
  exec antsibull-changelog release --version "$version" --update-existing
fi

antsibull-changelog lint
python3 - "$version" <<'PY'
import sys
from pathlib import Path
import yaml
version = sys.argv[1]
release = (yaml.safe_load(Path("changelogs/changelog.yaml").read_text()).get("releases") or {}).get(version, {})
missing = sorted({p.name for p in Path("changelogs/fragments").glob("*.yml")} - set(release.get("fragments", [])))
if missing:
    sys.exit(f"changelog: fragments not in CHANGELOG.md yet (run scripts/changelog.sh): {', '.join(missing)}")
PY
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
antsibull-changelog generate --output "$tmp" --output-format md
diff -u CHANGELOG.md "$tmp" >&2 || { echo "changelog: CHANGELOG.md is not generated from the fragments (run scripts/changelog.sh)" >&2; exit 1; }
