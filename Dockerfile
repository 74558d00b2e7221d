# The demo service for compose.yml: `autobot-otel demo` against the compose Redis.
FROM python:3.11.10-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY autobot_otel ./autobot_otel
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["autobot-otel", "demo", "--host", "0.0.0.0", "--port", "8000", "--duration", "0", "--no-live"]
