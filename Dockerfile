# syntax=docker/dockerfile:1
#
# Images of ethtwisted, two targets:
#
#   app   the default:    docker build -t ethtwisted .
#         Any of the twistd plugins, configured by ETH_* environment variables only, e.g.
#         docker run -e ETH_DB=mysql://eth@db:3306/eth -e ETH_MYSQL_PASSWORD ethtwisted eth-server
#
#   geth  docker build --target geth -t ethtwisted-geth .
#         The official geth image with Python and ethtwisted, so that eth-client can run in the
#         node's own container and reach it over IPC.  With no command it runs a whole demo:
#         a geth dev node, eth-server on SQLite with the stats API and dashboard on port 8080,
#         and eth-client following the node over IPC, all kept in /data:
#         docker run -p 127.0.0.1:8080:8080 -v ethtwisted-demo:/data ethtwisted-geth
#
# Both run twistd in the foreground as an unprivileged user (uid 10001), without a pid file
# (a stale one would stop a restarted container).  No secret is ever written into an image:
# pass passwords and tokens at run time, as variables or files.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG GETH_IMAGE=ethereum/client-go:v1.16.7


# The package, built once as a wheel from the source tree (what .dockerignore lets in); its
# dependencies are installed below at the exact versions of requirements.lock.
# Where a build cannot reach PyPI, the wheels of every dependency (and of setuptools and
# wheel, to build the package) can be put in wheels/ of the build context beforehand, e.g.
# with `pip wheel --constraint requirements.lock --wheel-dir wheels . setuptools wheel`: pip
# then installs from there alone.
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY . ./
RUN mkdir -p wheels \
    && if [ -n "$(ls wheels)" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/src/wheels; fi \
    && python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


# geth's image is Alpine: some dependencies have no wheel for musl and are compiled here.
FROM ${GETH_IMAGE} AS geth-build
# Alpine's own packages of the base image's release; their versions move with it.
# hadolint ignore=DL3018
RUN apk add --no-cache python3 python3-dev build-base
COPY --from=wheel /wheels /wheels
COPY --from=wheel /src/requirements.lock /
RUN python3 -m venv /opt/ethtwisted \
    && /opt/ethtwisted/bin/pip install --no-cache-dir --constraint /requirements.lock \
        /wheels/*.whl \
    && /opt/ethtwisted/bin/pip uninstall --yes pip setuptools


FROM ${GETH_IMAGE} AS geth
# hadolint ignore=DL3018
RUN apk add --no-cache python3 \
    && addgroup -S -g 10001 eth \
    && adduser -S -D -H -u 10001 -G eth -h /data -s /sbin/nologin eth \
    && mkdir -p /data /ipc \
    && chown eth:eth /data /ipc
COPY --from=geth-build /opt/ethtwisted /opt/ethtwisted
ENV PATH=/opt/ethtwisted/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ETH_DEV_NODE=geth \
    ETH_STATE_DIR=/data \
    ETH_STATS=tcp:8080:interface=0.0.0.0
# twistd reads its plugins through a cache beside them: build it now, as the owner of
# site-packages, so that the unprivileged user never has to write it.
RUN python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
WORKDIR /data
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ethtwisted.healthcheck"]
ENTRYPOINT ["twistd", "-n", "--pidfile="]
CMD ["eth-demo"]


# Every dependency has a wheel for glibc: no compiler, here or below.
FROM ${PYTHON_IMAGE} AS app-build
COPY --from=wheel /wheels /wheels
COPY --from=wheel /src/wheels /deps
COPY --from=wheel /src/requirements.lock /
RUN if [ -n "$(ls /deps)" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS=/deps; fi \
    && python -m venv /opt/ethtwisted \
    && /opt/ethtwisted/bin/pip install --no-cache-dir --only-binary=:all: \
        --constraint /requirements.lock /wheels/*.whl \
    && /opt/ethtwisted/bin/pip uninstall --yes pip setuptools


# The default target: last in this file.
FROM ${PYTHON_IMAGE} AS app
RUN groupadd --system --gid 10001 eth \
    && useradd --system --uid 10001 --gid eth --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin eth \
    && mkdir -p /data /ipc \
    && chown eth:eth /data /ipc
COPY --from=app-build /opt/ethtwisted /opt/ethtwisted
ENV PATH=/opt/ethtwisted/bin:$PATH \
    PYTHONUNBUFFERED=1
RUN python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"
WORKDIR /data
USER 10001:10001
EXPOSE 8080 9999
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ethtwisted.healthcheck"]
ENTRYPOINT ["twistd", "-n", "--pidfile="]
CMD ["eth-server"]
