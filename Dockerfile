FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY gateway gateway
COPY ocpp_server ocpp_server
COPY ingest ingest
COPY dr_controller dr_controller
COPY api api
COPY simulators simulators
COPY lishui lishui
RUN pip install --no-cache-dir .
ENV LISHUI_LOG_JSON=true
ENTRYPOINT ["lishui"]
