# Streampod: `make run` serves the demo, `make test` runs every test. Both set up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000

.PHONY: setup browser nginx run test test-pg test-fast test-py312 fuzz lint bench bench-quick bench-scale demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium for the browser tests (Playwright's own download does not work here).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "WARNING: could not install chromium; browser tests will fail under CI"; }

# Debian's nginx (and envsubst) for the tests that run nginx in front of two servers.
nginx:
	@{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } && command -v envsubst >/dev/null 2>&1 || { \
	  echo "installing Debian's nginx for the proxy tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx gettext-base >/dev/null) \
	  || echo "WARNING: could not install nginx; the nginx tests will fail under CI"; }

demo: setup
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo --port $(PORT)

run: demo
	$(BIN)/python manage.py runserver 127.0.0.1:$(PORT)

test: setup browser nginx
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The suite again on Python 3.12, where lanes start their tasks eagerly (a branch 3.11
# never runs): every unit and end-to-end test of the core, without the slowest
# system-level modules (browser, fresh-venv install, nginx, faults, fuzzing, the
# CPU-loaded reachability run), which exercise no interpreter-specific code of ours.
# (pyenv's shim is on the PATH but fails unless 3.12 is selected: use a real interpreter.)
PY312 ?= $(shell for p in $(HOME)/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do [ -x "$$p" ] && "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
PY312_ARGS ?= -m "not browser and not install" \
	--ignore=tests/e2e/test_faults.py --ignore=tests/e2e/test_nginx.py \
	--ignore=tests/e2e/test_fuzz.py --ignore=tests/e2e/test_reachability.py
test-py312:
	@test -n "$(PY312)" || { echo "python3.12 not found (install it, or pass PY312=...)"; exit 1; }
	$(MAKE) setup PY=$(PY312) VENV=.venv-3.12
	.venv-3.12/bin/python -m pytest $(PY312_ARGS) $(PYTEST_ARGS)

# The end-to-end chat (two servers sharing Redis), authentication, revocation and the REST
# API again on PostgreSQL (127.0.0.1:5432, user postgres, trust: STREAMPOD_TEST_PG_URL to
# change it). The test process and every server it starts use pytest-django's test
# database, test_streampod_<pid>_<random>: created for this run, dropped at its end.
STREAMPOD_TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432
PG_TESTS ?= tests/e2e/test_chat_e2e.py tests/e2e/test_revocation.py \
	tests/e2e/test_auth_e2e.py tests/test_chat_api.py \
	tests/e2e/test_nginx.py::test_a_browser_through_nginx_chats_with_a_python_client_on_the_other_upstream
# pytest-django drops it without FORCE, which fails while a thread of the test process
# still holds a connection: it is dropped WITH (FORCE) below instead, whatever the outcome.
test-pg: setup
	@db="streampod_$$$$_$$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"; status=0; \
	echo "PostgreSQL test database: test_$$db"; \
	DATABASE_URL="$(STREAMPOD_TEST_PG_URL)/$$db" $(BIN)/python -m pytest -p no:cacheprovider \
	  -W "ignore:Error when trying to teardown test databases:pytest.PytestWarning" \
	  $(PG_TESTS) $(PYTEST_ARGS) || status=$$?; \
	$(BIN)/python -c "import psycopg, sys; psycopg.connect(sys.argv[1], autocommit=True)\
	.execute('DROP DATABASE IF EXISTS \"test_' + sys.argv[2] + '\" WITH (FORCE)')" \
	  "$(STREAMPOD_TEST_PG_URL)/postgres" "$$db"; \
	exit $$status

test-fast: setup
	$(BIN)/python -m pytest -m "not e2e and not browser" $(PYTEST_ARGS)

# Property-based fuzzing against live daphne and uvicorn (tests/e2e/test_fuzz.py):
# FUZZ_EXAMPLES frames per server, a new seed each run (replay one with FUZZ_SEED=...).
# `make test` runs the same tests with a few hundred frames and a fixed seed.
FUZZ_EXAMPLES ?= 5000
ifndef FUZZ_SEED
FUZZ_SEED := $(shell date +%s)
endif

fuzz: setup
	@echo "fuzz seed: $(FUZZ_SEED) (make fuzz FUZZ_SEED=$(FUZZ_SEED) replays this run)"
	STREAMPOD_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) STREAMPOD_FUZZ_SEED=$(FUZZ_SEED) \
	  $(BIN)/python -m pytest tests/e2e/test_fuzz.py -p no:cacheprovider -rxX $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.methods

# One run of every contender and workload, no profile: about a third of `make bench`
# (for development; compare ratios within one run only).
bench-quick: setup
	$(BIN)/python -m bench.run --runs 1 --profile off --out /tmp/streampod-bench-quick

# The curves at scale, each into bench/results/<date>-<name>.{md,json,png} (docs/performance.md):
# fan-out to 10..10,000 listeners (one server and two sharing Redis), idle authenticated
# sockets on one uvicorn process up to 19,000 (and where their memory goes, at 2,000),
# open-loop relay latency at 25/50/75/90% of each contender's saturation (the knee of a step
# search; 75% of the overload figure too), again with the server on a core of its own, Streampod
# on two uvicorn workers against one, and the reconnect herd of 8,000 clients after a bus gap.
bench-scale: setup
	$(BIN)/python -m bench.fanout_curve --profile
	$(BIN)/python -m bench.connections
	$(BIN)/python -m bench.connections --steps 2000 --clients 2 --memprobe
	$(BIN)/python -m bench.open_loop
	$(BIN)/python -m bench.open_loop --pin
	$(BIN)/python -m bench.workers
	$(BIN)/python -m bench.herd --sockets 8000 --clients 4 --rates none,200,400

clean:
	rm -rf $(VENV) .venv-3.12 staticfiles db.sqlite3 test-artifacts
