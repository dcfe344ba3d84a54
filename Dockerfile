# Sentinel service image. Minimal for now; the container issue builds and runs it in CI.
# The base is a build argument so a machine without a registry can pass a locally made one.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT=8000
WORKDIR /srv
COPY requirements.lock .
RUN python -m pip install --no-cache-dir -r requirements.lock
COPY app ./app
RUN useradd --system --uid 10001 sentinel
USER sentinel
EXPOSE 8000
# REDIS_URL must point at the Redis Stack sidecar (see docker-compose.yml).
CMD ["python", "-m", "app"]
