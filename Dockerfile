# syntax=docker/dockerfile:1
# One image for every fedscreen service: `docker run IMAGE intake run`, `... prescreen run`,
# `... partner run`, `... train ...`. See docs/container.md.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- builder: compilers, and a wheel for the project and every dependency ---------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# rbcl (the libsodium fallback for ristretto255) and a few pure-Python dependencies
# are published as source only; gmpy2 needs GMP, MPFR and MPC where no wheel exists.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        build-essential libgmp-dev libmpfr-dev libmpc-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, from pyproject.toml alone, so a source change reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip wheel --wheel-dir /wheels -r requirements.txt

COPY README.md ./
COPY schemas ./schemas
COPY services ./services
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: no compilers, the wheels installed, a non-root user ----------------------
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libgomp1: LightGBM's OpenMP runtime. libsodium23: ristretto255 for PSI from the system
# library, so rbcl never has to unpack its bundled copy into a temporary file.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 libsodium23 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 fedscreen \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fedscreen \
        --no-create-home --shell /usr/sbin/nologin fedscreen \
    && mkdir -p /var/lib/fedscreen \
    && chown 10001:10001 /var/lib/fedscreen

# The wheels are bind-mounted from the builder, so they never become a layer here.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

# Read-only files, relative to the working directory: deploy/policy.toml (the policy
# `fedscreen train` also ships as its default; compose passes it with --policy), and the
# bundled data set (CC BY 4.0, attribution in data/README.md) that deploy/compose.yaml
# feeds the parties.
WORKDIR /app
COPY deploy/policy.toml deploy/policy.toml
COPY data/README.md data/UCI_Credit_Card.csv data/

USER 10001:10001

# Metrics, /healthz and /readyz when <SERVICE>_METRICS_PORT is set to these (the ports
# docs/operations.md uses): intake, partner, prescreen, webhooks; 8090 is the demo receiver.
EXPOSE 9100 9101 9102 9103 8090

ENTRYPOINT ["fedscreen"]
CMD ["--help"]
