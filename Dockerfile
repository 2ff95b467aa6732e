# One image for the three programs: exchange_connector, market_maker and live_server.
# docker-compose.grpc.yml picks the program with `command:`; run one by hand with e.g.
#   docker run --rm opensqt-grpc:local python -m implementation.connector serve --exchange sim
#
# Dependencies come from the repository's pinned files: the runtime requirements of
# pyproject.toml, constrained by requirements.lock (which also pins test/dev tools, never
# installed here). When docker/wheels/ holds wheels (docker/ci.sh downloads them), the build
# installs from those alone and needs no package index.

# ---------------------------------------------------------------- build: a venv with the programs
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, in a layer of their own: a code change does not reinstall them.
COPY docker/wheels/ /tmp/wheels/
COPY pyproject.toml requirements.lock docker/runtime_requirements.py /tmp/src/
RUN set -eu; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /tmp/wheels; fi; \
    python /tmp/src/runtime_requirements.py /tmp/src/pyproject.toml >/tmp/src/runtime.txt; \
    pip install --no-cache-dir "$@" -c /tmp/src/requirements.lock -r /tmp/src/runtime.txt

# Then the code (README.md is the package's long description; the wildcard keeps it optional).
COPY README.m[d] /tmp/src/
COPY opensqt/ /tmp/src/opensqt/
COPY implementation/ /tmp/src/implementation/
RUN set -eu; \
    if ls /tmp/wheels/*.whl >/dev/null 2>&1; then set -- --no-index --find-links /tmp/wheels; fi; \
    pip install --no-cache-dir --no-deps "$@" -c /tmp/src/requirements.lock /tmp/src \
    && python -c "import implementation.connector, implementation.market_maker, implementation.live_server"

# ---------------------------------------------------------------- runtime
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin opensqt
COPY --from=build /opt/venv /opt/venv
# Default configs; docker-compose.grpc.yml mounts its own over them.
COPY docker/config/ /etc/opensqt/
WORKDIR /tmp
USER 10001:10001
# gRPC (connector), HTTP (live_server), Prometheus metrics (connector)
EXPOSE 50051 8080 9090
# Exec form: python is PID 1 and gets SIGTERM itself; every program stops gracefully on it.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "implementation.connector", "serve", "--listen", "0.0.0.0:50051", "--exchange", "sim"]
