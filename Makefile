VENV ?= .venv
COMPOSE ?= docker compose
PYTEST_ARGS ?=

.PHONY: run_tests test-env images build_and_run stop bench lint docs

## Bring up everything the tests need (services, Docker, images), then run them all.
run_tests: test-env
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-env:
	bash scripts/test-env

## Build the sandbox image of every language plugin (skips those that are current).
images: test-env
	$(VENV)/bin/coderund images build

## The whole stack in Docker Compose: API, workers, PostgreSQL, Redis, RabbitMQ, Prometheus, Grafana.
build_and_run:
	$(COMPOSE) build
	$(COMPOSE) run --rm images
	$(COMPOSE) up -d

stop:
	$(COMPOSE) down

bench: test-env
	$(VENV)/bin/python bench/latency.py

lint:
	$(VENV)/bin/ruff check coderund tests bench

## The documentation site: its generated parts (tables, counts) written from the code, then built into site/.
docs:
	$(VENV)/bin/python -m coderund.docs_tables
	$(VENV)/bin/mkdocs build --strict
