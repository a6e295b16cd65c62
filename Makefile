# gpulab.fleet developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
COLL := $(ROOT)/.build/collections
export ANSIBLE_COLLECTIONS_PATH := $(COLL)
export PATH := $(VENV)/bin:$(PATH)

help:
	@echo "make demo         throwaway demo: local LXD + a workstation for alice, prints her ssh command"
	@echo "make test         install what is missing, then lint + unit + integration tests (CI)"
	@echo "make deps         apt packages, venv, collection link, LXD + test image, test VM"
	@echo "make lint | sanity | unit | integration | molecule | build | changelog"

# ---- set-up (each step idempotent, seconds when already done) ----
deps: apt venv collection backends

apt:
	bash scripts/install-deps.sh

$(VENV)/.stamp: requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.stamp

collection:
	bash scripts/collection-link.sh

# Real backends shared by many tests: LXD daemon + workstation test image, the OpenZFS test VM.
backends:
	bash scripts/backends.sh

# ---- checks ----
lint: venv collection
	$(VENV)/bin/ruff check plugins tests bench scripts molecule
	# ANSIBLE_HOME of its own: ansible-lint searches ANSIBLE_HOME/collections first, where molecule's prerun
	# leaves a copy of this collection that is stale by the next commit (unknown-module on new modules).
	mkdir -p .build/lint-home
	cd $(COLL)/ansible_collections/gpulab/fleet && ANSIBLE_HOME=$(ROOT)/.build/lint-home $(VENV)/bin/ansible-lint --profile production
	# CHANGELOG.md is generated from changelogs/fragments; the modules', filters' and roles' docs as docsite builds read them.
	bash scripts/changelog.sh --check
	$(VENV)/bin/antsibull-docs lint-collection-docs --plugin-docs .

sanity: venv
	bash scripts/sanity.sh

unit: venv collection
	$(PY) -m pytest tests/unit -q

integration: venv collection
	$(PY) -m pytest tests/integration -q

# Scenarios that converge roles on OpenZFS test VMs (lab: two VMs, docs/dev/lab.md).
MOLECULE_SCENARIOS ?= lab
export MOLECULE_SCENARIOS
# They converge the collection as installed from its tarball (scripts/ci/install-tarball.sh).
molecule: venv collection
	bash scripts/ci/install-tarball.sh >/dev/null
	cd $(COLL)/ansible_collections/gpulab/fleet && for s in $(MOLECULE_SCENARIOS); do \
	  ANSIBLE_COLLECTIONS_PATH=$(ROOT)/.build/admin/collections python3 scripts/ci/timing.py molecule $$s || exit 1; done

build: venv
	rm -rf .build/dist && mkdir -p .build/dist
	$(VENV)/bin/ansible-galaxy collection build --output-path .build/dist .
	$(VENV)/bin/ansible-galaxy collection install --force -p .build/installed .build/dist/gpulab-fleet-*.tar.gz
	ANSIBLE_COLLECTIONS_PATH=.build/installed $(VENV)/bin/ansible-doc -l gpulab.fleet | grep -q "gpulab.fleet.lxd_workstations"

# Every stage timed, some side by side, ending with the timing table (scripts/ci/test.sh).
test:
	bash scripts/ci/test.sh

# After adding a fragment to changelogs/fragments/ (every change that an admin would notice).
changelog: venv
	bash scripts/changelog.sh

demo: apt venv collection
	bash scripts/demo.sh

.PHONY: help deps apt venv collection backends lint sanity unit integration molecule build test demo changelog
