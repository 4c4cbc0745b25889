# fleetstream developer entry points. `make demo` and `make test` set up everything
# they need (Mosquitto, virtualenv from uv.lock, Kafka jars) on a bare Debian machine.
.PHONY: setup demo test unit integration faults check fmt up down status clean

VENV := .venv
BIN := $(VENV)/bin

setup:
	@bash scripts/setup.sh

demo: setup
	@$(BIN)/fleetstream demo

test: setup
	$(BIN)/pytest -m "unit or integration"

unit: setup
	$(BIN)/pytest -m unit

integration: setup
	$(BIN)/pytest -m integration

faults: setup
	$(BIN)/pytest -m faults

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
