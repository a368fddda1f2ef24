# slideaudit in a container: `docker run -v /archive:/data slideaudit run /data/manifest.csv --model /data/model --out /data/out`
FROM python:3.11-slim
WORKDIR /opt/slideaudit
COPY pyproject.toml constraints.txt README.md ./
COPY tiling tiling
COPY explainers explainers
COPY pipeline pipeline
COPY reports reports
# torch as pinned in constraints.txt (PyPI's Linux build runs on CUDA when the host has a GPU).
RUN pip install --no-cache-dir -c constraints.txt .
RUN useradd --create-home audit
USER audit
ENTRYPOINT ["slideaudit"]
CMD ["--help"]
