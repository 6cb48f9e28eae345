# binderapi as a container, next to JupyterHub.
#   docker build -t binderapi .
#   docker run --network host --group-add "$(stat -c %g /var/run/docker.sock)" \
#       -v /var/run/docker.sock:/var/run/docker.sock -v "$PWD/binderhub.yaml:/etc/binderapi/config.yaml:ro" \
#       binderapi --config-file /etc/binderapi/config.yaml
# It runs as uid 10001: --group-add gives it the engine socket's group (the Docker build backend).
# BASE_IMAGE needs python3 (3.11+) with venv; the default is the official slim image.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
COPY pyproject.toml README.md /src/
COPY src /src/src
RUN python3 -m venv /opt/binderapi \
 && /opt/binderapi/bin/pip install --no-cache-dir --disable-pip-version-check /src

FROM ${BASE_IMAGE}
# git: the `git` provider resolves refs with `git ls-remote`
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/binderapi /opt/binderapi
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin binderapi
ENV PATH=/opt/binderapi/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8585
ENTRYPOINT ["binderapi"]
CMD ["--ip", "0.0.0.0"]
