# One image for every CareWatch service: `carewatch ingest | alerts | api | sim | migrate | ...`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# uid/gid 1883 = the `mosquitto` user of eclipse-mosquitto:2, so the api can rewrite the broker's
# password file and ACL in the shared volume and signal the broker (same uid) to reload them.
RUN groupadd --system --gid 1883 carewatch \
 && useradd --system --uid 1883 --gid carewatch --home-dir /var/lib/carewatch --create-home \
        --shell /usr/sbin/nologin carewatch

WORKDIR /opt/carewatch

# Dependencies first (cached layer), pinned by the lead's constraints file for reproducible builds.
COPY pyproject.toml constraints.txt README.md ./
COPY carewatch/ carewatch/
COPY ingest/ ingest/
COPY alerts/ alerts/
COPY hotline/ hotline/
COPY api/ api/
COPY device_sim/ device_sim/
COPY welfare/ welfare/
RUN pip install --constraint constraints.txt . \
 && rm -rf /root/.cache

COPY deploy/healthcheck.py /opt/carewatch/healthcheck.py

USER carewatch
ENV CAREWATCH_DATA_DIR=/var/lib/carewatch \
    CAREWATCH_LOG_JSON=true

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/carewatch/healthcheck.py"]

ENTRYPOINT ["carewatch"]
CMD ["--help"]
