# Training / batch-job image: torch (CPU build), torchrec, Ray, MLflow and Plexus.
# Build from the repository root:  docker build -f infra/docker/train.Dockerfile -t plexus-train .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true

WORKDIR /opt/plexus
COPY constraints.txt pyproject.toml README.md ./
COPY platform ./platform
COPY models ./models
COPY pipelines ./pipelines
COPY serving ./serving

# Same order as the Makefile: torch first, fbgemm CPU build, torchrec without its CUDA deps.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt fbgemm-gpu-cpu tensordict torchmetrics==1.0.3 tqdm pyre-extensions \
 && pip install --no-deps -c constraints.txt torchrec \
 && pip install -c constraints.txt '.[train,export]' psycopg2-binary

ENTRYPOINT ["plexus"]
CMD ["--help"]
