# timerhook: one image for every role (api, dispatcher, migrate, serve).
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY dispatcher ./dispatcher
COPY db ./db
COPY core ./core
COPY cli ./cli
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --create-home --uid 10001 timerhook
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER timerhook
WORKDIR /home/timerhook
ENV TIMERHOOK_HOST=0.0.0.0 \
    TIMERHOOK_PORT=8000 \
    TIMERHOOK_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# Healthy = ready to serve: /readyz (the database answers, the schema is current). /healthz is
# the liveness probe for orchestrators that restart processes (it never touches the database).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)" || exit 1
ENTRYPOINT ["timerhook"]
CMD ["serve"]
