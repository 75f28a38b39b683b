# zkv — see README.md. `make demo` and `make test` are the two set-up commands.
# Building and installing need only the standard library: the system's python3.
PYTHON ?= python3
# Tests, lint, benchmarks and the demo run in the project's venv, made by `make deps` from
# Debian's own /usr/bin/python3 (which refuses pip outside a venv: PEP 668).
VENV ?= .venv
VPY = $(VENV)/bin/python
NICE ?=
PREFIX ?= /usr/local
DESTDIR ?=

# Every shell file: scripts with a sh/bash shebang, plus the sourced boot fragments (which carry
# a `# shellcheck shell=sh` directive instead).
SHELL_FILES = $(shell grep -rlE '^(\#!.*[/ ](ba|da)?sh( |$$)|\# shellcheck shell=(ba)?sh)' \
	dracut initramfs-tools zkv_early .ci tests/vm/guest bench systemd mk debian 2>/dev/null)
# The subset that runs under busybox/dash, where bashisms break the boot.
POSIX_SH_FILES = $(shell grep -lE '^(\#! ?/bin/sh|\# shellcheck shell=sh)' $(SHELL_FILES))

PY_DIRS = zkv zkv_admin zkv_early gateway tests bench man

.PHONY: all deps pyz test unit unit-clean lint e2e images bench man clean

all: pyz

# Everything the other targets need (apt + pip); idempotent, so `make test` can start with it.
deps:
	./.ci/install-deps

pyz:
	$(PYTHON) -m zkv_early.build_pyz --output dist/zkv-early.pyz

lint:
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)
	$(VENV)/bin/mypy
	shellcheck -x $(SHELL_FILES)
	checkbashisms -f $(POSIX_SH_FILES)

unit:
	$(NICE) $(VPY) -m pytest -q tests

# The same suite in a clean Debian 12 chroot, as on a newcomer's fresh machine: `make deps` from
# scratch there (cached in /var/tmp/zkv-e2e while its inputs stay the same), then `make unit`
# on a fresh copy of the tracked files (tests/vm/clean_debian.py; root and mmdebstrap).
unit-clean:
	$(NICE) $(VPY) -m tests.vm.clean_debian unit

# Two workers, a guest each: a TCG guest keeps one core busy, and the niced unit suite beside
# takes what they leave (which tests share a worker: tests/e2e/conftest.py).
E2E_WORKERS ?= 2
e2e: pyz
	$(VPY) -m pytest -m e2e tests/e2e -v -n $(E2E_WORKERS) --dist loadscope

images:
	$(VPY) -m tests.vm.build_images

# The whole suite: lint, then the unit and integration tests (in the clean chroot: unit-clean)
# beside the VM boot tests. TCG guests keep the cores busy, so the rest runs niced in what they
# leave: the whole suite takes about as long as the boots. Each part prints its report when it
# ends.
test:
	$(MAKE) deps
	$(MAKE) lint
	@echo "make test: unit-clean and e2e run side by side; each prints when it ends"
	$(MAKE) -j2 --output-sync=target unit-clean e2e NICE="nice -n 10"

# The man pages from man/*.in and the programs' parsers (a unit test says when they are stale).
man:
	$(VPY) man/mkman.py

bench: pyz
	$(VPY) -m bench

clean:
	rm -rf dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache  # the venv stays: rm -rf $(VENV)

# install/uninstall (mk/install.mk) and demo (mk/demo.mk) live beside their owners' files.
-include mk/*.mk
