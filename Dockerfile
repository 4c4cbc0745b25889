# One image for every fleetstream service: `docker run fleetstream <subcommand>`.
# Build: docker build -t fleetstream:local .   (docker-compose.yml builds it as fleetstream:local)
# No BuildKit-only syntax (RUN --mount), so the classic builder of docker-compose 1.29 works too.

# --- build stage: resolve the locked dependencies into /opt/venv with uv ---------------------
FROM python:3.11-slim AS build
# Same uv as scripts/setup.sh; installed from PyPI so the build needs no other registry.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
WORKDIR /src
# Dependencies first (a layer that survives code changes), exactly as locked, no dev group.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
# Then the project itself, installed as a regular (non-editable) package.
COPY fleetstream ./fleetstream
COPY telemetry ./telemetry
COPY simulator ./simulator
COPY ingest ./ingest
COPY processing ./processing
COPY dashboard ./dashboard
COPY models ./models
COPY bench ./bench
RUN uv sync --frozen --no-dev --no-editable

# --- runtime stage: the virtualenv only, no build tools, no source tree -----------------------
FROM python:3.11-slim AS runtime
# The archive and ingest-state folders exist and belong to the user: a named volume
# mounted there starts with this owner, so the services can write to it.
RUN groupadd --system --gid 10001 fleetstream \
    && useradd --system --uid 10001 --gid fleetstream --home-dir /var/lib/fleetstream \
       --create-home --shell /usr/sbin/nologin fleetstream \
    && install -d -o 10001 -g 10001 /var/lib/fleetstream/archive \
       /var/lib/fleetstream/ingest-state
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLEETSTREAM_PROCESSING_STATE_DIR=/var/lib/fleetstream/processing-state \
    FLEETSTREAM_INGEST_STATE_DIR=/var/lib/fleetstream/ingest-state
WORKDIR /var/lib/fleetstream
USER 10001:10001
# ingest /metrics + /healthz, processing /metrics, archive /metrics, dashboard
EXPOSE 9464 9465 9466 8501
ENTRYPOINT ["fleetstream"]
CMD ["--help"]
