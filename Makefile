# The README's commands. Each installs what is missing first (virtualenv, Python and Debian packages).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Debian packages the tests and benchmarks drive as real peers, by the command (or, for a plugin,
# the file) each provides.
DEBIAN_TOOLS := kamailio:kamailio sipp:sip-tester redis-server:redis-server prometheus:prometheus \
                promtool:prometheus tshark:tshark kamcmd:kamailio chromium:chromium sipsak:sipsak baresip:baresip-core \
                svwar:sipvicious linphonec:linphone-cli tinyproxy:tinyproxy \
                /usr/lib/$(shell gcc -dumpmachine 2>/dev/null || echo x86_64-linux-gnu)/kamailio/modules/tls.so:kamailio-tls-modules
PYTEST_ARGS ?=

.PHONY: run test bench fuzz fuzz-differential deps debian-deps clean

run: $(VENV)/.installed
	$(if $(CONFIG),,$(VENV)/bin/meter init --if-missing)
	$(VENV)/bin/meter run $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.installed debian-deps
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(VENV)/.installed debian-deps
	$(PY) -m bench.run $(BENCH_ARGS)

fuzz: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[fuzz]'
	$(PY) -m bench.fuzz $(FUZZ_ARGS)

# The compiled SIP scanner against the pure-Python codec only (issue 11): any observable difference is a finding.
fuzz-differential: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[fuzz]'
	$(PY) -m bench.fuzz --targets differential $(FUZZ_ARGS)

deps: $(VENV)/.installed debian-deps

$(VENV)/.installed: pyproject.toml setup.py codecs/_sipscan.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Installs only what is missing; needs root (or sudo) the first time on a fresh machine.
debian-deps:
	@missing=""; for pair in $(DEBIAN_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  case $$cmd in /*) test -e $$cmd ;; *) command -v $$cmd >/dev/null 2>&1 ;; esac || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; \
	fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis build codecs/*.so
