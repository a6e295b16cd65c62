#!/usr/bin/env bash
# ansible-test sanity for the collection. ansible-test insists on running from a path that ends in
# ansible_collections/gpulab/fleet and reads the file list from git, so the working tree (tracked and
# new files, minus ignored ones) is copied into .build/sanity/... and committed to a throwaway repo there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
dest="$root/.build/sanity/ansible_collections/gpulab/fleet"

# ansible-test downloads a pip bootstrap script from a host we cannot reach unless a cached copy exists.
pip_version=$("$venv/bin/python" - <<'PY'
import re, pathlib, ansible_test
src = pathlib.Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", src.read_text()).group(1))
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
mkdir -p "$(dirname "$cache")"
cmp -s "$root/scripts/sanity/get_pip_standin.py" "$cache" 2>/dev/null || cp "$root/scripts/sanity/get_pip_standin.py" "$cache"

rm -rf "$dest" && mkdir -p "$dest"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | rsync -a --from0 --files-from=- ./ "$dest/")
(cd "$dest" && git init -q && git add -A && git -c user.name=sanity -c user.email=sanity@localhost commit -qm sanity)
cd "$dest"
PATH="$venv/bin:$PATH" "$venv/bin/ansible-test" sanity --local --python 3.11 --requirements --color no "$@"
