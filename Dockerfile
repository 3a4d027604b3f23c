# The prediction service on CPU: `cifarlab serve` on a run directory mounted at /model.
#   docker build -t cifarlab .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/RUN:/model:ro" cifarlab
# How this file was checked: docs/serving.md, "Docker".
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
# The lock pins every version; as constraints it installs only what the package and
# its cpu extra need (not the test and export tools it also lists).
RUN pip install --constraint requirements.lock ".[cpu]" \
 && useradd --system --user-group --uid 10001 --no-create-home --shell /usr/sbin/nologin cifarlab

USER 10001:10001
EXPOSE 8000
# Ready, not just live: 503 until the model is loaded and warm, and while draining.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["cifarlab"]
CMD ["serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
