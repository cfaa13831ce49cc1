# Two entry points (see README): `make quickstart` and `make test`. Both set up everything.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
SSBENCH := $(VENV)/bin/ssbench

.PHONY: setup data postgres paper-tools quickstart test bench clean

$(PY):
	$(shell command -v $(PYTHON) >/dev/null 2>&1 && echo $(PYTHON) || echo python3) -m venv $(VENV)

# torch/torchvision pinned: the CPU torch wheel has no working torchvision here (constraints.txt)
setup: $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,scale]'

# Fashion-MNIST ships as a Debian package; elsewhere ssbench downloads it with torchvision.
data:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: /usr/share/datasets/fashion-mnist missing; ssbench will try torchvision's download"; fi; \
	fi

# The store tests start their own throw-away PostgreSQL servers (tests/pgserver.py) from Debian's
# binaries. A cluster the package may start on install is stopped again: nothing uses it.
PG_INITDB ?= /usr/lib/postgresql/*/bin/initdb
postgres:
	@if ! ls $(PG_INITDB) >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql \
	    && { pg_lsclusters -h 2>/dev/null | while read -r ver name _; do \
	           pg_ctlcluster "$$ver" "$$name" stop 2>/dev/null || true; done; }; \
	  else echo "note: PostgreSQL is not installed; the PostgreSQL store tests will be skipped"; fi; \
	fi

# The report tests compile LaTeX with pdflatex and open the HTML report in headless Chromium.
paper-tools:
	@if ! command -v pdflatex >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium texlive-latex-base texlive-latex-recommended lmodern; \
	  else echo "note: pdflatex / chromium missing; the LaTeX and HTML report tests will be skipped"; fi; \
	fi

quickstart: setup data
	$(SSBENCH) run recipes/quickstart.yaml

test: setup data postgres paper-tools
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: setup data
	$(PY) benchmarks/rules_step.py
	$(PY) benchmarks/attack_sweep.py
	$(PY) benchmarks/grid.py

clean:
	rm -rf $(VENV) ssbench-results .pytest_cache
