# fleetstream developer entry points. `make demo` and `make test` set up everything
# they need (Mosquitto, virtualenv from uv.lock, Kafka jars) on a bare Debian machine.
.PHONY: setup demo test unit integration faults faults-ci check fmt up down status clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

demo: setup
	@$(BIN)/fleetstream demo

test: setup
	$(BIN)/pytest -m "unit or integration" --durations=25

unit: setup
	$(BIN)/pytest -m unit

integration: setup
	$(BIN)/pytest -m integration

# Fault injection (docs/faults.md): the issue's full numbers, about 10 min; faults-ci is
# the reduced run CI uses. Rows are appended to test-output/faults/rows.jsonl.
faults: setup
	FLEETSTREAM_FAULTS_SCALE=full $(BIN)/pytest -m faults -s tests/faults

faults-ci: setup
	FLEETSTREAM_FAULTS_SCALE=ci $(BIN)/pytest -m faults -s tests/faults

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: setup
	$(BIN)/fleetstream infra up

down:
	$(BIN)/fleetstream infra down

status:
	$(BIN)/fleetstream infra status

clean: down
	rm -rf .run
