# logikids-sync container image: `docker compose up` (see docker-compose.yml) or
#   docker build -t logikids-sync . && docker run -e DATABASE_URL=... -p 5175:5175 logikids-sync
# The service applies pending migrations itself at start-up (docs/architecture.md), so the image needs
# nothing but a DATABASE_URL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# An unprivileged user to run as; it owns nothing in /app, which it only reads.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

WORKDIR /app

# queries/ and migrations/ live beside the package (service/__init__.py resolves them as
# PROJECT_ROOT/queries and PROJECT_ROOT/migrations), so the whole project goes into /app and
# is installed in place: a plain `pip install .` would leave them out of site-packages.
# README.md* : copied when present (pyproject.toml names it as the readme).
COPY pyproject.toml README.md* /app/
COPY service/ /app/service/
COPY queries/ /app/queries/
COPY migrations/ /app/migrations/
RUN pip install --no-cache-dir -e /app \
    && cd / \
    && python -c "import service; assert service.QUERIES_DIR.is_dir() and service.MIGRATIONS_DIR.is_dir()" \
    && logikids-sync --help > /dev/null

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
