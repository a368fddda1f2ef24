# slideaudit in a container.
#   docker build -t slideaudit .                          CPU torch (default)
#   docker build --build-arg TORCH=cuda -t slideaudit .   CUDA torch; run with `docker run --gpus all`
#   docker run --rm -v /archive:/data slideaudit run /data/manifest.csv --model /data/model --out /data/out
#   docker run --rm -p 8000:8000 -v /archive:/data slideaudit serve --model /data/model \
#       --reports /data/out --host 0.0.0.0 --port 8000
# It runs as user `audit`, uid 1000 / gid 1000: OUT must be writable by that uid (or pass
# --user "$(id -u):$(id -g)"). `serve` listens on port 8000 (EXPOSE); --host 0.0.0.0 lets the
# published port reach it.
FROM python:3.11-slim
ARG TORCH=cpu
WORKDIR /opt/slideaudit
# Dependencies first, in their own layer: rebuilt only when pyproject.toml or constraints.txt change.
COPY pyproject.toml constraints.txt ./
RUN case "$TORCH" in \
      cpu)  index="--index-url https://download.pytorch.org/whl/cpu" ;; \
      cuda) index="" ;; \
      *)    echo "TORCH must be cpu or cuda, not $TORCH" >&2; exit 2 ;; \
    esac \
 && pip install --no-cache-dir $index -c constraints.txt torch torchvision \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt
# Then the source, which changes often.
COPY README.md ./
COPY tiling tiling
COPY explainers explainers
COPY pipeline pipeline
COPY reports reports
RUN pip install --no-cache-dir --no-deps . \
 && groupadd --gid 1000 audit && useradd --uid 1000 --gid 1000 --create-home audit
USER audit
EXPOSE 8000
ENTRYPOINT ["slideaudit"]
CMD ["--help"]
