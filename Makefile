# The two commands: `make demo` and `make test`. Each creates or refreshes .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is declared as a range in pyproject.toml; these pins pick the builds this project is
# developed and tested with (override on the command line, e.g. TORCH_PINS="torch torchvision").
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
WORKSPACE  ?= demo-workspace
DEMO_ARGS  ?=

.PHONY: demo serve test venv venv-dev browser clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Stamps make a second `make` instant, and any change to pyproject.toml refreshes the venv.
$(VENV)/.stamp-base: pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.stamp-base
venv-dev: $(VENV)/.stamp-dev

# Browser tests drive Debian's chromium through Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get install -y -q chromium >/dev/null 2>&1 || \
	   (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
	  echo "warning: could not install chromium; browser tests will be skipped"; }

demo: venv
	$(VENV)/bin/conceptevo demo --workspace $(WORKSPACE) $(DEMO_ARGS)

serve: venv
	$(VENV)/bin/conceptevo serve $(WORKSPACE)

test: venv-dev browser
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(WORKSPACE) test-artifacts
