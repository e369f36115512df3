"""The SightScan gateway: REST API, webcam websocket with ONNX Runtime detection, model hot-swap, web page."""
