# make book   set up (.venv, data) and build the book -> _build/html: without PROFILE, from the most
#             complete committed records (the data's own copy first, else another; no training),
#             else the smoke profile;
#             with PROFILE=smoke|cpu|quick|paper (DEVICE, JOBS runs at once per GPU), train its plan, then build
# make test   run the tests (README's test command), TEST_JOBS test files at a time (default 2; 0: one process)
# make lab    JupyterLab on the book
PROFILE ?=
DEVICE ?= auto
JOBS ?= 1
TEST_JOBS ?= 2
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_JPEG := ../shared/data/make_cifar10_batches.py
export RESNET_CIFAR_DATA ?= $(CURDIR)/data

.PHONY: setup data book lab test bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[book,test]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The official CIFAR-10 when it can be downloaded; on this project's own machines (offline, with
# ../shared beside the checkout) the JPEG q75 copy, which every figure then labels as such.
data: setup
	@if [ -d "$(RESNET_CIFAR_DATA)/cifar-10-batches-py" ]; then \
	  echo "data: using $(RESNET_CIFAR_DATA)/cifar-10-batches-py"; \
	elif [ -f "$(SHARED_JPEG)" ]; then \
	  echo "data: building the CIFAR-10 JPEG q75 copy from ../shared (NOT the official dataset)"; \
	  $(PY) $(SHARED_JPEG) "$(RESNET_CIFAR_DATA)"; \
	else \
	  $(PY) -m resnet_cifar download --data-dir "$(RESNET_CIFAR_DATA)"; \
	fi

book: data
	@profile="$(PROFILE)"; copy=""; \
	if [ -z "$$profile" ]; then best=$$($(PY) -m resnet_cifar records --best) || exit 1; \
	  set -- $$best; profile="$$1"; copy="$$2"; fi; \
	if [ -n "$(PROFILE)" ] || [ -z "$$profile" ]; then \
	  profile="$${profile:-smoke}"; \
	  set -x; $(PY) -m resnet_cifar run --profile "$$profile" --device $(DEVICE) --jobs $(JOBS) --retrain-published && \
	  $(PY) scripts/build_book.py --profile "$$profile" --device $(DEVICE) --runs-dir runs; \
	else \
	  echo "book: the committed records of profile $$profile, trained on $$copy (no training; make book PROFILE=... trains)"; \
	  set -x; $(PY) scripts/build_book.py --profile "$$profile" --records-data "$$copy" --device $(DEVICE); \
	fi

# JupyterLab refuses to start as root unless told to (containers, CI machines): pass
# --allow-root only there, so a normal user gets JupyterLab's default behaviour.
lab: setup
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) book/

test: setup
	$(PY) -m pytest -ra -n $(TEST_JOBS) --dist loadfile --durations=15

bench: setup
	$(PY) -m resnet_cifar bench --device $(DEVICE)

# Measure this machine's CUDA GPU within BUDGET seconds (default 540: BUDGET=540 make gpu-check):
# probes, the fused benchmark, the paper's schedule, the quick plan fused; results in gpu-check/
# (settings: the environment variables at the top of scripts/gpu_check.sh).
gpu-check:
	PYTHON=$${PYTHON:-$(if $(wildcard $(PY)),$(PY),python3)} bash scripts/gpu_check.sh

clean:
	rm -rf _build
