# syntax=docker/dockerfile:1
# Build: docker build -t epctl:0.1.0 .   Run: docker run --rm epctl:0.1.0 version
# Stage 1 builds wheels (compilers live only here); stage 2 installs them into a slim, non-root image.
# Reproducible: the base image is pinned by digest and every dependency by constraints.txt.
# Update the base: docker buildx imagetools inspect python:3.11-slim (or: crane digest python:3.11-slim),
# put the new index digest in BASE below, rebuild, run the tests.
ARG BASE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY epctl ./epctl
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM ${BASE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="epctl" \
      org.opencontainers.image.description="Keeps Kubernetes Services pointed at healthy endpoints outside the Pod network" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/epctl/epctl"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels epctl \
    && rm -rf /wheels \
    && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin epctl
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8080
ENTRYPOINT ["epctl"]
CMD ["controller"]
