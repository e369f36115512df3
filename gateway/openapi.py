"""The OpenAPI 3.1 document of the gateway, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from gateway import ws

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_CITY = {"name": "city", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "city name (case and blanks do not matter)"}
_AUTH = [{"bearer": []}]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "SightScan gateway", "version": "1.0.0",
                 "description": "Cities, uploads and models of the SightScan warehouse; live detection over the "
                                "websocket /ws/detect?city=NAME.\n\n" + (ws.__doc__ or "")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "SIGHTSCAN_API_TOKEN of the gateway; writes only"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"],
                          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
                "Figure": {
                    "type": "object", "required": ["key", "name", "value", "display", "basis", "group"],
                    "description": "one figure of a model's metrics, named and readable (sightscan/model_metrics.py)",
                    "properties": {
                        "key": {"type": "string", "description": "the metrics key it comes from, e.g. top1"},
                        "name": {"type": "string",
                                 "description": "what was measured, e.g. 'Box mAP@0.5 (true boxes only)'"},
                        "value": {"description": "the raw value; for 'confusion': {classes, matrix}, rows = true "
                                                 "sight, columns = predicted; null: not measured"},
                        "display": {"type": "string", "description": "the value as text, e.g. '97.5 %'"},
                        "basis": {"type": ["string", "null"],
                                  "description": "what it was measured on, e.g. '40 held-out images, image-level "
                                                 "labels'"},
                        "group": {"enum": ["measured", "training"],
                                  "description": "how well the model does, or how it was made"}}},
                "CityStatus": {"type": "object", "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string"},
                    "status": {"enum": ["requested", "crawling", "labelling", "training", "live", "failed"]},
                    "sights": {"type": "integer"}, "images": {"type": "integer"},
                    "labelled_images": {"type": "integer"},
                    "model": {"type": ["object", "null"], "properties": {
                        "version": {"type": "integer"},
                        "metrics": {"type": "object", "description": "the model row's metrics JSON, as stored"},
                        "figures": {"type": "array", "items": {"$ref": "#/components/schemas/Figure"},
                                    "description": "the metrics, named and readable, most telling first"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "classes": {"type": "array", "items": {"type": "string"}}}},
                    "mart": {"type": ["object", "null"]}}},
                "ModelMeta": {"type": "object", "properties": {
                    "version": {"type": "integer"}, "classes": {"type": "array", "items": {"type": "string"}},
                    "input_size": {"type": "integer"}, "metrics": {"type": "object"},
                    "figures": {"type": "array", "items": {"$ref": "#/components/schemas/Figure"}},
                    "sha256": {"type": "string"}, "download": {"type": "string"}}},
            },
        },
        "paths": {
            "/api/cities": {
                "get": {"summary": "every city with its pipeline status", "responses": {"200": {
                    "description": "cities", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"cities": {
                            "type": "array", "items": {"$ref": "#/components/schemas/CityStatus"}}}}}}}}},
                "post": {"summary": "request a city (the pipeline starts from its change event)", "security": _AUTH,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}},
                         "responses": {"201": {"description": "created"}, "200": {"description": "already there"},
                                       "400": _ERR, "401": _ERR, "403": _ERR, "503": _ERR}},
            },
            "/api/cities/{city}": {"get": {"summary": "one city's pipeline status", "parameters": [_CITY],
                                           "responses": {"200": {"description": "status", "content": {
                                               "application/json": {"schema": {
                                                   "$ref": "#/components/schemas/CityStatus"}}}}, "404": _ERR}}},
            "/api/cities/{city}/images": {"post": {
                "summary": "upload an image (decoded and validated; stored as sent)", "parameters": [_CITY],
                "security": _AUTH,
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG, WebP or PNG"},
                        "sight": {"type": "string", "description": "the sight it shows, if known"}}}}}},
                "responses": {"201": {"description": "stored"}, "200": {"description": "duplicate, not stored"},
                              "400": _ERR, "401": _ERR, "403": _ERR, "404": _ERR, "413": _ERR, "415": _ERR}}},
            "/api/cities/{city}/model": {"get": {
                "summary": "the latest model's version and metadata", "parameters": [_CITY],
                "responses": {"200": {"description": "model", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/ModelMeta"}}}}, "404": _ERR}}},
            "/api/cities/{city}/model.onnx": {"get": {
                "summary": "download the latest model (ONNX; X-Model-Version header)", "parameters": [_CITY],
                "responses": {"200": {"description": "ONNX bytes", "content": {"application/octet-stream": {}}},
                              "404": _ERR}}},
            "/ws/detect": {"get": {
                "summary": "websocket: binary frames in, JSON detections out (see the description)",
                "parameters": [{"name": "city", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"101": {"description": "switching protocols"}, "403": {"description": "bad Origin"}}}},
            "/healthz": {"get": {"summary": "the process is up", "responses": {"200": {"description": "up"}}}},
            "/readyz": {"get": {"summary": "PostgreSQL answers and model events are assigned",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not yet"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }
