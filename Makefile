# spark-control: `make run` brings the stack up, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := run

VENV ?= .venv
PY = $(VENV)/bin/python
STAMP = $(VENV)/.installed

.PHONY: venv run test ci-deps lint bench clean distclean

# Install into the venv once; again only when pyproject.toml changes.
venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	@touch $@

run: venv
	$(VENV)/bin/spark-control up

test: ci-deps venv
	$(VENV)/bin/ruff check app workers tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# On CI only: the system parts the integration tests drive (sshd, chromium, playwright-core).
ci-deps:
ifeq ($(CI),true)
	@if [ ! -x /usr/sbin/sshd ] || [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y openssh-server chromium; \
	fi
	@if [ -f tests/browser/package.json ]; then \
		npm install --no-save --prefix tests/browser playwright-core; \
	fi
endif

lint: venv
	$(VENV)/bin/ruff check app workers tests bench
	$(VENV)/bin/mypy

bench: venv
	@set -e; for f in bench/*.py; do \
		[ -e "$$f" ] || continue; \
		echo "== $$f"; \
		$(PY) "$$f"; \
	done

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache tests/browser/node_modules
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
