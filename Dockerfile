# spark-control: one image for the web front and both workers (compose.yaml picks the command).
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY templates ./templates
RUN pip install . && rm -rf /src

# Non-root. /data is created here so named volumes mounted on it start out owned by `app`.
RUN useradd --create-home --uid 1000 --user-group app \
    && mkdir -p /data \
    && chown app:app /data
USER app
WORKDIR /home/app
ENV SPARK_DATA_DIR=/data

EXPOSE 9999
CMD ["spark-control", "web"]
