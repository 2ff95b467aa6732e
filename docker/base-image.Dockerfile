# A local stand-in for python:3.11-slim, for machines that reach no container registry.
# It is built from the Debian 12 image made by ../shared/docker/ci_engine.sh (localdebian:12),
# whose python3 is 3.11, and tagged python:3.11-slim so the project's Dockerfile stays normal:
#
#   docker build --pull=false -t python:3.11-slim - < docker/base-image.Dockerfile
#
# docker/ci.sh does this only when python:3.11-slim is neither present nor pullable.
FROM localdebian:12
# Debian's python3 has no `python` or `pip` on PATH; a venv gives both. The venv's bin goes
# on PATH (a symlinked venv python is not detected as a venv when called by its full path).
RUN python3 -m venv /opt/py \
    && /opt/py/bin/python -m pip --version >/dev/null
ENV VIRTUAL_ENV=/opt/py \
    PATH=/opt/py/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8
LABEL org.opencontainers.image.title="python:3.11-slim stand-in" \
      org.opencontainers.image.description="Debian 12 python3 (3.11) in a venv; local stand-in, never pushed"
CMD ["python3"]
