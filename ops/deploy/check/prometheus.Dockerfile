# Prometheus from Debian's package, for the deployment check (check.sh), where the
# registry's prom/prometheus image cannot be pulled. Any Debian bookworm base.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/*
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
