# logikids-sync container image: `docker compose up` (see docker-compose.yml) or
#   docker build -t logikids-sync . && docker run -e DATABASE_URL=... -p 5175:5175 logikids-sync
# The service applies pending migrations itself at start-up (docs/architecture.md), so the
# image needs nothing but a DATABASE_URL.

# --- build: the wheel, with the locked setuptools --------------------------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY requirements/build.txt requirements/build.txt
RUN pip install --require-hashes --no-deps -r requirements/build.txt
# service/queries and service/migrations link to the top-level folders: the wheel carries
# the SQL files themselves.
COPY pyproject.toml README.md LICENSE ./
COPY queries/ queries/
COPY migrations/ migrations/
COPY service/ service/
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# --- runtime: the locked dependencies, then the wheel alone ----------------------------
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# An unprivileged user to run as; it owns nothing it could change.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

COPY requirements/main.txt /tmp/requirements.txt
RUN pip install --require-hashes --no-deps -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && cd / \
    && logikids-sync sql --print store_record > /dev/null

USER app

ENV HOST=0.0.0.0 \
    PORT=5175

EXPOSE 5175

# Readiness: /health answers 200 only while PostgreSQL does (slim has no curl, so urllib).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('PORT', '5175'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

# Exec form: the service is PID 1 and gets SIGTERM directly, finishing in-flight requests
# within SHUTDOWN_TIMEOUT (25 s by default) before it exits.
CMD ["logikids-sync", "serve"]
