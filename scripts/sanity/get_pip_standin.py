"""Stand-in for the pip bootstrap script ansible-test downloads from a host this machine cannot reach.

ansible-test runs it inside each new sanity venv as `python get_pip_X_Y.py pip==X.Y [pkgs] [--no-setuptools]
[--no-wheel]`. We bootstrap pip from the standard library (ensurepip) and then install the requested
packages from the machine's configured index.
"""

import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip leaves these behind; with them pip would ignore /etc/pip.conf (CA bundle, index).
os.environ.pop("PIP_CONFIG_FILE", None)
os.environ.pop("ENSUREPIP_OPTIONS", None)
wanted = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", *wanted]))
