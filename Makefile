# Two entry points, both self-contained on a fresh machine:
#   make bench   set up .venv with the CPU backends and run the default benchmark matrix
#   make test    set up .venv with what the tests need and run the project's tests
# Anything after ARGS= goes to pytest, e.g. make bench ARGS="-k resnet18 --benchmark-json=out.json"

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
BENCH_EXTRAS := torch,llm,onnxruntime,openvino,tensorflow,serve,variants
TEST_EXTRAS  := torch,llm,onnxruntime,openvino,tensorflow,serve,variants,test
ARGS ?=
# PlaidML pins Keras 2.2.4, which cannot share an environment with Keras 3 (tensorflow):
# the tests check it from an environment of its own.
PLAIDML_VENV ?= .venv-plaidml
PLAIDML_PY   := $(PLAIDML_VENV)/bin/python

.PHONY: bench test nightly print-nightly-envs browser emulator venv-bench venv-test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# One stamp per extras set, so a changed pyproject.toml reinstalls.
$(VENV)/.installed-%: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(subst +,$(comma),$*)]"
	touch $@

$(PLAIDML_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(PLAIDML_VENV)
	$(PLAIDML_PY) -m pip install --quiet --upgrade pip
	$(PLAIDML_PY) -m pip install --quiet -e ".[plaidml]"
	touch $@

comma := ,
venv-bench: $(VENV)/.installed-$(subst $(comma),+,$(BENCH_EXTRAS))
venv-test: $(VENV)/.installed-$(subst $(comma),+,$(TEST_EXTRAS))

bench: venv-bench
	$(PY) -m pytest suites $(ARGS)

# pytest's exit code 5 means "no tests collected" (e.g. an ARGS filter matched nothing):
# say so loudly, but it is not a failure of the project.
# The report test renders the page in a real headless Chromium: Debian's package, installed
# when missing and this is root with apt (as on CI); elsewhere that one test skips, saying so.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	echo "no chromium here: the report rendering test will skip"

# tests/test_isa.py runs ONNX Runtime's AVX2 int8 kernels under QEMU's Zen 3 CPU model, so
# the non-VNNI path is checked on every x86-64 machine: Debian's qemu-user, installed like
# Chromium (root with apt); elsewhere that one test skips, saying so.
emulator:
	@command -v qemu-x86_64 >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; } || \
	echo "no qemu-x86_64 here: the AVX2 emulation test will skip"

test: venv-test $(PLAIDML_VENV)/.installed browser emulator
	INFERMATRIX_PLAIDML_PYTHON=$(PLAIDML_PY) $(PY) -m pytest tests $(ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests were collected (exit 5)"; exit 0; fi; exit $$rc

# The nightly off GitHub, the same Python entry point the workflow runs (docs/nightly.md):
# every backend environment this machine supports (each its own tox environment, chosen by its
# tox label, so tox.ini stays the one list of backends; the GPU ones only where an NVIDIA driver
# is), one after another, after the cache fill; then the verdicts (history mode against the
# results branch, paired mode against a re-creation of the accepted baseline's environments),
# the report (report/night.md, summary.md, index.html), and the night committed to the local
# branch `results` (checked out at .infermatrix-results/), accepted as the newest baseline only
# when no environment or case failed and nothing regressed. Its exit status is the night's.
# NIGHTLY_ARGS go to every environment's pytest, e.g. NIGHTLY_ARGS="--models resnet18";
# NIGHTLY_OPTS to the nightly itself, e.g. NIGHTLY_OPTS="--no-paired" or "--remote origin".
NIGHTLY_ARGS ?=
NIGHTLY_OPTS ?=
NIGHTLY_LABELS := cpu-backends$(if $(shell command -v nvidia-smi), gpu-backends,)
empty :=
space := $(empty) $(empty)
nightly: venv-test
	$(PY) -m infermatrix nightly --labels $(subst $(space),$(comma),$(strip $(NIGHTLY_LABELS))) $(NIGHTLY_OPTS) -- $(NIGHTLY_ARGS)

# The environments `make nightly` would run here, one a line, as tox selects them. It needs
# only tox: `make print-nightly-envs PY=python3` where .venv is not set up.
print-nightly-envs:
	@$(PY) -m tox list -q --no-desc -m $(NIGHTLY_LABELS)

clean:
	rm -rf $(VENV) $(PLAIDML_VENV) .infermatrix-cache .benchmarks
