# Retrieval service image: onnxruntime, faiss, FastAPI/uvicorn, mlflow-skinny. No torch, no Ray.
# Build from the repository root:  docker build -f infra/docker/serve.Dockerfile -t plexus-serve .
# Run:  docker run -p 8000:8000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 \
#         -e PLEXUS_SERVE_MODEL=retrieval@champion plexus-serve
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY models ./models
COPY pipelines ./pipelines
COPY serving ./serving
# Only the serve extra (+ uvloop/httptools, the fast uvicorn loop and parser) goes into /venv;
# the base dependencies are numpy, pyarrow and pyyaml. torch is never installed.
RUN python -m venv /venv \
 && /venv/bin/pip install '.[serve]' uvloop httptools \
 && /venv/bin/python -c "import plexus.serving.app, sys; assert 'torch' not in sys.modules"

FROM python:3.11-slim
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    XDG_CACHE_HOME=/tmp/cache \
    PLEXUS_SERVE_HOST=0.0.0.0 \
    PLEXUS_SERVE_PORT=8000 \
    PLEXUS_SERVE_CACHE_DIR=/var/cache/plexus \
    PLEXUS_SERVE_POLL_INTERVAL=30
# faiss-cpu wheels link OpenMP (libgomp ships in the wheel); curl is for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent plexus \
 && mkdir -p /var/cache/plexus && chown plexus /var/cache/plexus
COPY --from=build /venv /venv
USER plexus
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/readyz || exit 1
ENTRYPOINT ["python", "-m", "plexus.serving"]
