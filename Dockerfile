# coderund: one image for the API, the workers and the sandbox image builder.
# BASE is any Debian bookworm image: Compose passes debian:bookworm-slim; `make image` passes the
# project's own debootstrap base (coderund/base:bookworm), so that no registry is needed.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS system

# python3 (bookworm's 3.11) runs coderund; gcc builds the static sandbox supervisor; debootstrap lets
# `images build` work without a registry; curl serves the health checks.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv gcc libc6-dev debootstrap curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/coderund
ENV PATH=/opt/coderund/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
    LANG=C.UTF-8

# The dependencies that setup.cfg names, alone: the layer that installs them is reused until they change.
FROM system AS requirements
COPY setup.cfg /tmp/setup.cfg
RUN python3 -c "import configparser; c = configparser.ConfigParser(); c.read('/tmp/setup.cfg'); \
print('\n'.join(l for l in c['options']['install_requires'].split('\n') if l.strip() and not l.startswith('#')))" \
      > /requirements.txt

FROM system
# pip-cert.pem: the CA bundle of a host whose TLS to PyPI goes through a proxy of its own (make image copies
# it); LICENSE beside it, a file that is always there, lets the COPY find nothing else.
COPY --from=requirements /requirements.txt /tmp/build/
COPY LICENSE pip-cer[t].pem /tmp/build/
RUN if [ -f /tmp/build/pip-cert.pem ]; then export PIP_CERT=/tmp/build/pip-cert.pem; fi \
 && pip install --no-cache-dir "setuptools>=61" wheel -r /tmp/build/requirements.txt \
 && rm -rf /tmp/build

# coderund itself, as a wheel installs it (plugins and migrations inside the package).
COPY setup.py setup.cfg pyproject.toml README.md LICENSE /tmp/coderund/
COPY coderund /tmp/coderund/coderund
COPY plugins /tmp/coderund/plugins
COPY sql /tmp/coderund/sql
RUN pip install --no-cache-dir --no-deps --no-build-isolation /tmp/coderund \
 && rm -rf /tmp/coderund \
 && python3 -c "from pathlib import Path; from coderund.sandbox import supervisor; supervisor.build(Path('/var/cache/coderund'))" \
 && useradd --system --uid 10001 coderund

ENV CODERUND_CACHE_DIR=/var/cache/coderund \
    CODERUND_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["coderund"]
CMD ["--role", "all"]
