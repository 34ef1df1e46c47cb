# Harmony container image: `docker build -t harmony .` then `docker run -p 8000:8000 harmony`.
# Two stages: the builder turns the source tree into a wheel and installs it (with its
# dependencies) into a virtual environment at /opt/venv; the final image holds that venv, the
# Alembic migrations and the example seed, and runs as an unprivileged user.

# --- builder ---------------------------------------------------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /build
# pyproject.toml names README.md as the package's readme: setuptools needs it to build.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --upgrade pip \
 && pip wheel . --no-deps --wheel-dir /build/wheels \
 && pip install /build/wheels/harmony-*.whl

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim

# The migrations are not inside the wheel: HARMONY_MIGRATIONS_DIR tells harmony where they are.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HARMONY_MIGRATIONS_DIR=/app/migrations \
    HARMONY_HOST=0.0.0.0 \
    HARMONY_PORT=8000

RUN groupadd --gid 10001 harmony \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin harmony

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
COPY migrations/ /app/migrations/
COPY examples/ /app/examples/
# The default database is SQLite at ./var/harmony.db, i.e. /app/var/harmony.db: the only
# directory the service writes. Mount a volume there to keep data across containers, or set
# HARMONY_DATABASE_URL=postgresql+asyncpg://... and nothing is written in the container.
RUN mkdir -p /app/var && chown 10001:10001 /app/var

USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HARMONY_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["harmony"]
CMD ["serve"]
