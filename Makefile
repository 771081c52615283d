# weak_template_ros: `make demo` and `make test` on a fresh machine.
# Both create .venv (Python 3.11) when missing, install the pinned dependencies and, when run as
# root, the Debian packages Open3D needs. ROS traffic stays on loopback (see config/fastdds_loopback.xml).

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := libegl1 libgl1 libx11-6 libusb-1.0-0 strace
# Pytest workers: the suite is sized for 2 cores.
JOBS ?= 2

# Loopback-only ROS 2 for every process started from here (tests, demo, bench).
export FASTRTPS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export ROS_DOMAIN_ID ?= 77
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp

# BlenderProc backend: its own environment (bpy 4.2 + BlenderProc 2.8, pinned in sim/constraints.txt),
# laid out as a Blender install; rebuilt only when its inputs change (stamp.json is written last).
SIM_ENV   := sim/blenderproc_env
SIM_STAMP := $(SIM_ENV)/stamp.json
SIM_INPUTS := sim/build_env.py sim/blender_shim.py sim/requirements-blender.in \
              sim/requirements-blenderproc.in sim/constraints.txt

.PHONY: all venv sim-setup test demo bench lint constraints clean system-deps

all: test

system-deps:
	@if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi; \
	else \
	  for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo "warning: Debian package $$p missing (needed by Open3D); run as root or install it"; done; \
	fi

$(STAMP): requirements.in constraints.txt setup.py
	@$(MAKE) --no-print-directory system-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -r requirements.in -c constraints.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

venv: $(STAMP)

$(SIM_STAMP): $(SIM_INPUTS)
	$(PYTHON) sim/build_env.py --out $(SIM_ENV)

sim-setup: $(SIM_STAMP)

test: venv sim-setup
	$(BIN)/python -m pytest -n $(JOBS) test

demo: venv
	$(BIN)/weak-template demo --out out/demo

bench: venv
	$(BIN)/python bench/bench_renderer.py

lint: venv
	$(BIN)/ruff check .

# Re-pin after changing requirements.in (records exactly what .venv holds).
constraints: venv
	{ echo "# Pinned versions of every package in .venv (pip freeze of requirements.in, Python 3.11)."; \
	  echo "# Regenerate with: make constraints"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e' | sort -f; } > constraints.txt

clean:
	rm -rf $(VENV) $(SIM_ENV) out build *.egg-info
