# The two commands for a new machine:
#   make train [DATA=path/to/cifar-10-binary.tar.gz] [ARGS="--recipe seed ..."]
#   make test
# Both create .venv and install cifarlab with pinned versions (requirements.lock) first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?=
ARGS ?=
EXTRA ?= cpu

.PHONY: install train test browser clean

$(BIN)/.installed-$(EXTRA): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[$(EXTRA),test]'
	@touch $@

install: $(BIN)/.installed-$(EXTRA)

train: install
	$(BIN)/cifarlab train $(if $(DATA),--data $(DATA)) $(ARGS)

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Browser tests use Debian's Chromium. Install it where we can (root with apt, as on CI);
# elsewhere those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	  || echo "note: chromium not installed; browser tests will be skipped"; }

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
