# syntax=docker/dockerfile:1
# Prediction API image (compose service `api`). Two stages: the first installs the service and its
# locked dependencies into a virtualenv, the second copies only that venv onto a clean base, so no
# pip cache, build tooling or source checkout ends up in the image.
#
#   docker build -t stockpred-prediction-api:0.1.0 .
#
# The base is pinned to the exact Python the tests and `make run` use (3.11.7); bump it together
# with the development venv. Debian bookworm, same as the machines the tests run on.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- build: a venv at the same path as in the final image (venv scripts hard-code it) -----------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, against an empty `service` package: this layer (mlflow, scikit-learn,
# pandas, pyarrow: most of the image) is rebuilt only when pyproject.toml or the lock changes, not
# on every code edit. requirements.lock is a constraints file: it pins every version pip picks
# without installing the dev tools it also lists.
COPY pyproject.toml requirements.lock README.md ./
RUN mkdir service && touch service/__init__.py \
    && pip install -c requirements.lock . \
    && pip uninstall --yes stock-prediction-service \
    && rm -rf service build *.egg-info

# Then the service itself; --no-deps because everything it needs is already installed above.
COPY service ./service
RUN pip install --no-deps -c requirements.lock . \
    && pip check

# --- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="stockpred prediction API" \
      org.opencontainers.image.description="Stock-direction prediction service (FastAPI, OpenTelemetry)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DATA_DIR=/data

# A fixed, unprivileged uid/gid so volume ownership is predictable across rebuilds. Its home is
# the data directory: libraries that want a writable $HOME (matplotlib, via mlflow) get one there.
RUN groupadd --system --gid 10001 stockpred \
    && useradd --system --uid 10001 --gid stockpred --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin stockpred \
    && mkdir -p /data \
    && chown stockpred:stockpred /data

COPY --from=build /opt/venv /opt/venv

# SQLite files (when no DATABASE_URL is set) and the model cache live here. Created and chowned
# above, before VOLUME: a fresh named volume copies this ownership, so the user can write to it.
VOLUME ["/data"]

USER stockpred:stockpred
WORKDIR /data
EXPOSE 8000

# No curl in slim images; the venv's Python does the request. urlopen raises on connection errors
# and on 503 (/health answers 503 only when the service cannot predict at all), so the exit code
# is non-zero exactly then. The start period covers the first start's seeding and training.
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["stockpred", "serve", "--host", "0.0.0.0", "--port", "8000"]
