# slideaudit in a container, built from the lock (constraints.txt: every package at one version,
# written by `make lock`), so a rebuild installs the same thing.
#   docker build -t slideaudit .                          CPU torch (default)
#   docker build --build-arg TORCH=cuda -t slideaudit .   CUDA torch; run with `docker run --gpus all`
#   docker run --rm --no-healthcheck -v /archive:/data slideaudit run /data/manifest.csv \
#       --model /data/model --out /data/out
#   docker run -d -p 8000:8000 -v /archive:/data slideaudit serve --model /data/model \
#       --reports /data/out --host 0.0.0.0 --port 8000
# It runs as user `audit`, uid 1000 / gid 1000: OUT must be writable by that uid (or pass
# --user "$(id -u):$(id -g)"). tini (PID 1) forwards signals, so `docker stop` ends a run cleanly
# (exit 143; a rerun resumes) and reaps the Dask workers. HEALTHCHECK asks `serve` for /healthz on
# port 8000 (EXPOSE); --host 0.0.0.0 lets the published port reach it. Other commands have no
# server: run them with --no-healthcheck (else the container reads "unhealthy").
# The base is the Python the lock was written on (its first line).
FROM python:3.11.7-slim-bookworm
ARG TORCH=cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/slideaudit
# Every pip install below, the isolated build of slideaudit included, is held to the lock.
ENV PIP_CONSTRAINT=/opt/slideaudit/constraints.txt PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, in their own layer: rebuilt only when pyproject.toml or the lock change.
# torch and torchvision come from PyTorch's CPU index or PyPI (CUDA); the lock pins their versions
# through PIP_CONSTRAINT, which hadolint cannot read (DL3013).
COPY pyproject.toml constraints.txt ./
# hadolint ignore=DL3013
RUN case "$TORCH" in \
      cpu)  torch_index=https://download.pytorch.org/whl/cpu ;; \
      cuda) torch_index=https://pypi.org/simple ;; \
      *)    echo "TORCH must be cpu or cuda, not $TORCH" >&2; exit 2 ;; \
    esac \
 && pip install --no-cache-dir --index-url "$torch_index" torch torchvision \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
# Then the source, which changes often.
COPY README.md ./
COPY tiling tiling
COPY explainers explainers
COPY pipeline pipeline
COPY reports reports
RUN pip install --no-cache-dir --no-deps . \
 && groupadd --gid 1000 audit && useradd --uid 1000 --gid 1000 --create-home audit
USER 1000:1000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "slideaudit"]
CMD ["--help"]
