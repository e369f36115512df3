# The image of SightScan's own services. No torch here: serving uses ONNX Runtime; a trainer image adds the
# `train` extra (pip install -e '.[train]').
FROM python:3.11-slim
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -e .
USER nobody
