# dengine_trio: `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two install stamps: running a node needs only the runtime dependencies (a first
# `make start-cluster` installs those alone); lint, tests and benchmarks add the test extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed-test
LINT_PATHS := dengine_trio tests $(wildcard bench)
LOG_LEVEL ?= info
export LOG_LEVEL

.DEFAULT_GOAL := help

.PHONY: help install install-run lint test chaos clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install-run: $(RUN_STAMP) ## create .venv and install the project with its runtime dependencies only

install: $(STAMP) ## create .venv and install the project with its test extras

lint: $(STAMP) ## ruff and mypy
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# The API and bad-input suites once more with the KV port behind two HTTP worker processes
# ([http] workers; docs/testing.md): the same answers in both modes.
WORKER_SUITES := tests/e2e/test_kv_api.py tests/e2e/test_kv2_api.py tests/e2e/test_auth.py \
	tests/e2e/test_newcomer_smuggling.py tests/e2e/test_newcomer_half_close.py \
	tests/e2e/test_newcomer_stalled_body.py

test: lint ## lint, then the whole test suite (bounded hypothesis budget), then the API suites with HTTP workers
	$(BIN)/pytest -q -m "not chaos"
	DENGINE_HTTP_WORKERS=2 $(BIN)/pytest -q -m "not chaos" $(WORKER_SUITES)

chaos: $(STAMP) ## long randomized campaigns (minutes)
	DENGINE_CHAOS=1 $(BIN)/pytest -q -m chaos -s

clean: ## remove logs, databases and snapshots
	rm -rf logs db snapshots

.PHONY: start-cluster start-node1 start-node2 start-node3

start-cluster: $(RUN_STAMP) ## run nodes 1-3 in parallel (KV 8081-8083, health 10001-10003); Ctrl+C stops them
	$(BIN)/python -m dengine_trio.devcluster

start-node1: $(RUN_STAMP) ## run node 1 in the foreground (KV 8081, health 10001, config/n1.toml)
	$(BIN)/python -m dengine_trio --config-path config/n1 --port 8081 --health-port 10001

start-node2: $(RUN_STAMP) ## run node 2 in the foreground (KV 8082, health 10002, config/n2.toml)
	$(BIN)/python -m dengine_trio --config-path config/n2 --port 8082 --health-port 10002

start-node3: $(RUN_STAMP) ## run node 3 in the foreground (KV 8083, health 10003, config/n3.toml)
	$(BIN)/python -m dengine_trio --config-path config/n3 --port 8083 --health-port 10003

.PHONY: start-lb bench-failover

start-lb: ## run HAProxy with deploy/haproxy.cfg in the foreground (clients on 127.0.0.1:8080)
	@haproxy=$$(command -v haproxy || command -v /usr/sbin/haproxy || command -v /usr/local/sbin/haproxy) || { \
		echo "haproxy is not installed; on Debian/Ubuntu: sudo apt-get install haproxy" >&2; \
		exit 1; }; \
	echo "$$haproxy -f deploy/haproxy.cfg -db"; \
	exec "$$haproxy" -f deploy/haproxy.cfg -db

bench-failover: $(STAMP) ## leader SIGKILL/SIGTERM through HAProxy, 10 runs each (about 2 minutes)
	$(BIN)/python -m bench.failover

.PHONY: bench-write

bench-write: $(STAMP) ## write latency (1 client) and throughput (64 writers), 3 processes, MemFirst and DiskFirst (about 1 minute)
	$(BIN)/python -m bench.write

.PHONY: bench-snapshots

bench-snapshots: $(STAMP) ## snapshots and compaction (issue 13): 1,000,000 overwrites on 3 processes, restart, catch-up, a 1,000,000-key snapshot, 64 writers vs PySyncObj (about 4 minutes)
	@$(BIN)/python -c "import pysyncobj" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python -m bench.snapshots

.PHONY: bench-membership bench-kv2

bench-membership: $(STAMP) ## issue 14: join to voter on a cluster holding 1,000,000 keys, removing/killing the leader under writes; rewrites its block of docs/benchmarks.md (2-5 minutes)
	$(BIN)/python -m bench.membership

bench-kv2: $(STAMP) ## issue 17: CAS, txn of 16 puts and watch fan-out (100 watchers), ours and etcd if installed (about 2 minutes)
	$(BIN)/python -m bench.kv2 --rounds 3

.PHONY: bench bench-notice

# Printed before anything is installed or run (a prerequisite listed first runs first).
bench-notice:
	@echo "make bench will, without asking:"
	@echo "  - install the test and bench extras (pysyncobj, matplotlib) into $(VENV) if missing;"
	@echo "  - if run as root with apt-get, install the OS packages wrk and etcd-server if missing"
	@echo "    (otherwise those parts are skipped, with a message);"
	@echo "  - run the benchmarks (about 16 minutes), then rewrite the generated section of the"
	@echo "    tracked docs/benchmarks.md and docs/benchmarks.png (git diff shows the change;"
	@echo "    .venv/bin/python -m bench.suite --no-doc runs them without writing)."
	@echo "Ctrl+C stops it at any point."

bench: bench-notice $(STAMP) ## the suite: embedded vs PySyncObj, snapshots, HTTP (1 and 2 workers) vs the ceilings (raw ASGI alone and beside a leader, Quart) and etcd, CAS/txn/watch vs etcd, membership; rewrites docs/benchmarks.md (about 16 minutes)
	@$(BIN)/python -c "import pysyncobj, matplotlib" 2>/dev/null || $(BIN)/python -m pip install -q -e '.[test,bench]'
	@missing=""; command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing$$missing from the OS packages (best effort)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q $$missing >/dev/null 2>&1 || \
		{ apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$missing >/dev/null 2>&1; } || \
		echo "could not install$$missing"; \
	fi
	@command -v wrk >/dev/null || echo "wrk is not installed: the HTTP part will be skipped (sudo apt-get install wrk)"
	@command -v etcd >/dev/null || echo "etcd is not installed: etcd will be skipped (sudo apt-get install etcd-server)"
	$(BIN)/python -m bench.suite

.PHONY: certs

# Throwaway certificates for a local TLS cluster (config/tls/n1..n3.toml; docs/security.md):
# one CA and one certificate per node, each naming node-<id> (the peer name the transport
# checks), localhost and 127.0.0.1, usable as server and client certificate. 30 days, P-256.
CERT_DAYS ?= 30
certs: certs/node-3.pem ## throwaway CA and node certificates under certs/ for config/tls (openssl; not for production)

certs/node-3.pem:
	@command -v openssl >/dev/null || { echo "openssl is not installed; on Debian/Ubuntu: sudo apt-get install openssl" >&2; exit 1; }
	mkdir -p certs
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days $(CERT_DAYS) \
		-subj "/CN=dengine-trio dev CA" -keyout certs/ca-key.pem -out certs/ca.pem \
		-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
	for i in 1 2 3; do \
		printf '%s\n' "subjectAltName=DNS:node-$$i,DNS:localhost,IP:127.0.0.1" \
			"extendedKeyUsage=serverAuth,clientAuth" "keyUsage=critical,digitalSignature" \
			"basicConstraints=critical,CA:FALSE" "subjectKeyIdentifier=hash" \
			"authorityKeyIdentifier=keyid,issuer" > certs/node-$$i.ext && \
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=node-$$i" \
			-keyout certs/node-$$i-key.pem -out certs/node-$$i.csr 2>/dev/null && \
		openssl x509 -req -in certs/node-$$i.csr -CA certs/ca.pem -CAkey certs/ca-key.pem \
			-set_serial 0x$$(openssl rand -hex 16) -days $(CERT_DAYS) \
			-extfile certs/node-$$i.ext -out certs/node-$$i.pem 2>/dev/null || exit 1; \
		rm -f certs/node-$$i.csr certs/node-$$i.ext; \
	done
	chmod 600 certs/*-key.pem
	@echo "certs/: ca.pem, node-{1,2,3}.pem and keys (valid $(CERT_DAYS) days; rm -rf certs && make certs renews them)"
