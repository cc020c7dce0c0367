VENV ?= .venv
COMPOSE ?= docker compose
PYTEST_ARGS ?=
IMAGE ?= coderund/coderund:latest
DEBOOTSTRAP_BASE := coderund/base:bookworm
## The image coderund's own is built on: any Debian bookworm; by default the project's debootstrap base (no registry).
BASE ?= $(DEBOOTSTRAP_BASE)
## The worker's engine socket in Compose, from DOCKER_HOST when it names a unix socket (rootless Docker, a proxy).
PIP_CERT ?= $(firstword $(wildcard $(shell $(VENV)/bin/pip config list 2>/dev/null | sed -n "s/^[a-z:]*\.cert='\(.*\)'$$/\1/p")))
export CODERUND_DOCKER_SOCKET ?= $(or $(patsubst unix://%,%,$(filter unix://%,$(DOCKER_HOST))),/var/run/docker.sock)

.PHONY: run_tests test-env images image build_and_run stop clean bench lint docs

## Bring up everything the tests need (services, Docker, images), then run them all.
run_tests: test-env
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-env:
	bash scripts/test-env

## Build the sandbox image of every language plugin (skips those that are current).
images: test-env
	$(VENV)/bin/coderund images build

## coderund's own image ($(IMAGE)) from the Dockerfile with no container registry, on BASE. Only PyPI and Debian's
## mirror are reached; where this host's TLS to PyPI goes through a proxy of its own, PIP_CERT (or pip's `cert`
## setting) names the CA bundle that pip in the build is given.
image:
ifeq ($(BASE),$(DEBOOTSTRAP_BASE))
	$(VENV)/bin/python -m coderund images build --base-only
endif
	$(if $(PIP_CERT),cp $(PIP_CERT) pip-cert.pem,rm -f pip-cert.pem)
	docker build --network host --build-arg BASE=$(BASE) -t $(IMAGE) .

## The whole stack in Docker Compose: API, workers, PostgreSQL, Redis, RabbitMQ, Prometheus, Grafana (docs/operate/install.md).
build_and_run:
	$(COMPOSE) build
	$(COMPOSE) run --rm images
	$(COMPOSE) up -d

stop:
	$(COMPOSE) down

## Compose's containers, volumes and images; and every coderund sandbox container, tools volume and image left
## on this engine (a killed worker's too). The next build_and_run starts from nothing.
clean:
	-$(COMPOSE) --profile tools down --volumes --remove-orphans --rmi all
	docker ps -aq --filter label=coderund | xargs -r docker rm -f
	docker volume ls -q --filter label=coderund | xargs -r docker volume rm
	docker images -q --filter reference='coderund/*' | sort -u | xargs -r docker rmi -f
	rm -f pip-cert.pem

bench: test-env
	$(VENV)/bin/python bench/latency.py
	$(VENV)/bin/python bench/e2b_sdk.py
	$(VENV)/bin/python bench/egress.py
	$(VENV)/bin/python bench/sandbox_pause.py

lint:
	$(VENV)/bin/ruff check coderund tests bench

## The documentation site: its generated parts (tables, counts) written from the code, then built into site/.
docs:
	$(VENV)/bin/python -m coderund.docs_tables
	$(VENV)/bin/mkdocs build --strict
