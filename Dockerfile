# coderund: one image for the API, the workers and the sandbox image builder.
FROM python:3.11-slim-bookworm

# gcc builds the static sandbox supervisor; debootstrap lets `images build` work without a registry.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev debootstrap curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY coderund coderund
COPY plugins plugins
COPY sql sql
RUN pip install --no-cache-dir -e . \
 && python -c "from pathlib import Path; from coderund.sandbox import supervisor; supervisor.build(Path('/var/cache/coderund'))" \
 && useradd --system --uid 10001 coderund

ENV CODERUND_CACHE_DIR=/var/cache/coderund \
    CODERUND_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["coderund"]
CMD ["--role", "all"]
