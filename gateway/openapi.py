"""The OpenAPI 3.1 document of the gateway, served at /openapi.json."""

from __future__ import annotations

from typing import Any

from gateway import ws

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_CITY = {"name": "city", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1},
         "description": "city name, URL-encoded. Names are compared after Unicode NFKC normalisation, case folding, "
                        "and removing control and format characters and extra blanks (sightscan/names.py); a name "
                        "with nothing printable left is a 400"}
_AUTH = [{"bearer": []}]


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _ERR for s in statuses}


_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
_BOX = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 4, "maxItems": 4,
        "description": "[x_min, y_min, x_max, y_max], normalised to the frame: 0..1, x_min < x_max, y_min < y_max"}
_USER_NAME = {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}
_RATE_LIMITED = {**_ERR, "description": "more than GATEWAY_CORRECTIONS_PER_MINUTE corrections a minute from this "
                                        "token", "headers": {"Retry-After": {
                     "required": True, "description": "seconds until the token may send again",
                     "schema": {"type": "string", "pattern": "^[0-9]+$"}}}}


def _model_file() -> dict[str, Any]:
    """GET /api/cities/{city}/model.onnx: the live model's bytes, cached by version (gateway/model_files.py)."""
    described = {name: {"description": text, "schema": {"type": "string"}} for name, text in (
        ("ETag", '"v<version>-<model id>"'), ("Cache-Control", "no-cache: keep it, ask again with If-None-Match"),
        ("X-Model-Version", "the model's version"), ("X-Model-Id", "the model row's id"),
        ("X-Model-Input-Size", "S: the model's input is [N, 3, S, S]"),
        ("X-Model-Classes", "the class list, as JSON"))}
    graph = {"X-Model-Graph": {"description": "fp32: the fp32 graph the trainer kept for pages because /ws/detect runs "
                                              "int8 (WebAssembly runs int8 slower); served: the graph /ws/detect runs",
                               "schema": {"type": "string", "enum": ["fp32", "served"]}}}
    return {
        "summary": "the city's live model (ONNX), the one /ws/detect serves: ETag by version, 304 when If-None-Match "
                   "names it; its headers describe it",
        "parameters": [_CITY, {"name": "If-None-Match", "in": "header", "required": False,
                               "schema": {"type": "string"}, "description": "an ETag this client holds"}],
        "responses": {"200": {"description": "ONNX bytes", "headers": {**described, **graph},
                              "content": {"application/octet-stream": {}}},
                      "304": {"description": "the model named by If-None-Match is still the live one",
                              "headers": described},
                      **_errors(400, 404, 503)}}


def _local_inference_schema() -> dict[str, Any]:
    text = {"type": ["string", "null"]}
    return {"LocalInference": {"type": "object", "required": [
        "available", "reason", "runtime", "version", "script", "wasm_paths", "score_threshold", "frame_budget_ms",
        "keepalive_s"], "properties": {
        "available": {"type": "boolean", "description": "onnxruntime-web is installed on this gateway"},
        "reason": {**text, "description": "why not, when it is not"},
        "runtime": {"const": "onnxruntime-web"}, "version": text,
        "script": {**text, "description": "the runtime's script, for a classic worker's importScripts"},
        "wasm_paths": {**text, "description": "where the runtime finds its WebAssembly files"},
        "score_threshold": {"type": "number", "description": "GATEWAY_SCORE_THRESHOLD: detections under it are "
                                                             "dropped, as on the server"},
        "frame_budget_ms": {"type": "number", "description": "a page whose median time per frame on the device "
                                                             "exceeds this falls back to the server"},
        "keepalive_s": {"type": "number", "description": "how often a page that sends no frames says something on "
                                                         "the websocket (half of GATEWAY_IDLE_TIMEOUT_S)"}}}}


def _correction_schemas() -> dict[str, Any]:
    """Users and corrections (docs/corrections.md)."""
    return {
        "UserAdded": {"type": "object", "required": ["name", "token", "created_at"], "properties": {
            "name": _USER_NAME, "created_at": {"type": "string", "format": "date-time"},
            "token": {"type": "string", "description": "the user's token, shown this once: the warehouse keeps only "
                                                       "its SHA-256"}}},
        "UserDisowned": {"type": "object", "required": ["name", "disowned_at", "corrections_deleted",
                                                        "images_deleted"], "properties": {
            "name": _USER_NAME, "disowned_at": {"type": "string", "format": "date-time"},
            "corrections_deleted": {"type": "integer", "minimum": 0},
            "images_deleted": {"type": "integer", "minimum": 0,
                               "description": "frames no other correction used"}}},
        "Correction": {"type": "object", "required": ["id", "city", "image_id", "action", "sight", "box", "label_id",
                                                      "user", "model_version", "shown", "created_at"], "properties": {
            "id": {"type": "integer"}, "city": {"type": "string"},
            "image_id": {"type": "integer", "description": "the frame, an image of origin 'user' (or the stored "
                                                           "image with the same bytes)"},
            "action": {"enum": ["confirm", "wrong-sight", "box", "no-sight", "keep"]},
            "sight": {"type": ["string", "null"]}, "box": {"oneOf": [_BOX, {"type": "null"}]},
            "label_id": {"type": ["integer", "null"],
                         "description": "the label it made: 'user-box' or 'user-negative'; null for keep"},
            "user": {"type": ["string", "null"], "description": "null: the operator"},
            "model_version": {"type": ["integer", "null"]},
            "shown": {"type": "array", "items": {"type": "object"}},
            "created_at": {"type": "string", "format": "date-time"}}},
    }


def _correction_paths() -> dict[str, Any]:
    """Users and corrections (docs/corrections.md); every one needs a token."""
    correction_ref = {"$ref": "#/components/schemas/Correction"}
    return {
        "/api/users": {"post": {
            "summary": "add a user with a token of their own (the operator's token only); the token is shown once",
            "security": _AUTH,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["name"], "properties": {"name": _USER_NAME}}}}},
            "responses": {"201": _json({"$ref": "#/components/schemas/UserAdded"}, "added"),
                          "409": {**_ERR, "description": "the name is taken (a disowned user's too)"},
                          **_errors(400, 401, 403, 413, 503)}}},
        "/api/users/{name}": {"delete": {
            "summary": "disown a user (the operator's token only): their token is refused from now on and every "
                       "correction they made is deleted, with its label and each frame no other correction uses",
            "security": _AUTH,
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": _USER_NAME}],
            "responses": {"200": _json({"$ref": "#/components/schemas/UserDisowned"}, "disowned (again: nothing "
                                                                                       "left to delete)"),
                          **_errors(401, 403, 404, 503)}}},
        "/api/cities/{city}/corrections": {
            "post": {
                "summary": "correct what the model answered on a frame: a label of kind user-box or "
                           "user-negative, or the frame kept as a photo of the city (docs/corrections.md)",
                "parameters": [_CITY], "security": _AUTH,
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["correction"], "properties": {
                        "correction": {"type": "string", "contentMediaType": "application/json", "description":
                                       'JSON: {"action": "confirm" | "wrong-sight" | "box" | "no-sight" | "keep", '
                                       '"sight": name (confirm, wrong-sight, box), "box": [x_min, y_min, x_max, '
                                       'y_max] (confirm, wrong-sight, box), "model_version": n (optional), "shown": '
                                       '[{"sight", "score", "box"}] (optional, at most 50)}'},
                        "frame": {"type": "string", "format": "binary",
                                  "description": "the frame as shown: JPEG, WebP or PNG, at most "
                                                 "GATEWAY_MAX_UPLOAD_BYTES bytes; or instead 'image_id'"},
                        "image_id": {**_ID, "description": "instead of 'frame': a frame an earlier correction of "
                                                           "this city stored"}}}}}},
                "responses": {"201": _json(correction_ref, "stored"),
                              "422": {**_ERR, "description": "sight is not one of the city's sights, or image_id "
                                                             "is not a frame of its corrections"},
                              "429": _RATE_LIMITED, **_errors(400, 401, 403, 404, 413, 415, 503)}},
            "get": {
                "summary": "the city's corrections, newest first: a user's own, or (the operator) everyone's",
                "parameters": [_CITY, {"name": "user", "in": "query", "required": False, "schema": _USER_NAME,
                                       "description": "only this user's (a user may name only themselves)"},
                               {"name": "limit", "in": "query", "required": False,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}},
                               {"name": "before", "in": "query", "required": False, "schema": _ID,
                                "description": "only ids below this one (the next page)"}],
                "security": _AUTH,
                "responses": {"200": _json({"type": "object", "required": ["corrections"], "properties": {
                    "corrections": {"type": "array", "items": correction_ref}}}, "corrections"),
                              **_errors(400, 401, 403, 404, 503)}}},
        "/api/cities/{city}/corrections/{id}": {"delete": {
            "summary": "undo a correction (its user, or the operator): the label goes, and the frame when no other "
                       "correction uses it",
            "parameters": [_CITY, {"name": "id", "in": "path", "required": True, "schema": _ID}],
            "security": _AUTH,
            "responses": {"204": {"description": "undone"}, **_errors(400, 401, 403, 404, 503)}}},
    }


def _review_schemas() -> dict[str, Any]:
    """The review queue (docs/corrections.md, "Review queue")."""
    detection = {"type": "object", "required": ["sight", "score", "box"], "properties": {
        "sight": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1},
        "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}}}
    return {
        "ReviewFrame": {"type": "object", "required": [
            "id", "reason", "model_version", "threshold", "shown", "width", "height", "mime_type", "kept_at", "frame",
            "accept"], "properties": {
            "id": {"type": "integer"},
            "reason": {"enum": ["near-threshold", "close-sights"],
                       "description": "near-threshold: the top score within GATEWAY_REVIEW_THRESHOLD_MARGIN of the "
                                      "threshold; close-sights: the top two sights within GATEWAY_REVIEW_CLOSE_MARGIN "
                                      "of each other"},
            "model_version": {"type": "integer", "description": "the model that answered the frame"},
            "threshold": {"type": "number", "description": "the threshold the rule compared with: the model's "
                                                           "calibrated one, or GATEWAY_SCORE_THRESHOLD"},
            "shown": {"type": "array", "items": detection, "description": "the detections answered"},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "mime_type": {"enum": ["image/jpeg", "image/webp", "image/png"]},
            "kept_at": {"type": "string", "format": "date-time"},
            "frame": {"type": "string", "description": "the path of the frame's bytes (GET, with a token)"},
            "accept": {"type": "object", "required": ["action"], "description": "what accepting sends as the "
                       "correction: confirm the top detection, or no-sight when the model answered nothing",
                       "properties": {"action": {"enum": ["confirm", "no-sight"]}, "sight": {"type": "string"},
                                      "box": {"type": "array", "items": {"type": "number"}}}}}},
        "ReviewQueue": {"type": "object", "required": ["city", "sample", "waiting", "frames"], "properties": {
            "city": {"type": "string"},
            "sample": {"type": "boolean", "description": "whether the city keeps unsure live frames now"},
            "waiting": {"type": "integer", "minimum": 0, "description": "frames waiting for review in all"},
            "frames": {"type": "array", "items": {"$ref": "#/components/schemas/ReviewFrame"},
                       "description": "newest first"}}},
        "ReviewSampling": {"type": "object", "required": ["city", "sample", "updated_at"], "properties": {
            "city": {"type": "string"}, "sample": {"type": "boolean"},
            "updated_at": {"type": "string", "format": "date-time"}}},
    }


def _review_paths() -> dict[str, Any]:
    """The review queue (docs/corrections.md, "Review queue"); every one needs a token."""
    frame_id = {"name": "id", "in": "path", "required": True, "schema": _ID}
    return {
        "/api/cities/{city}/review": {
            "get": {
                "summary": "the city's review queue: live frames on which the model was unsure, newest first "
                           "(kept only while the city samples); accept or fix one with a correction of its bytes",
                "parameters": [_CITY, {"name": "limit", "in": "query", "required": False,
                                       "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                               {"name": "before", "in": "query", "required": False, "schema": _ID,
                                "description": "only ids below this one (the next page)"}],
                "security": _AUTH,
                "responses": {"200": _json({"$ref": "#/components/schemas/ReviewQueue"}, "the queue"),
                              **_errors(400, 401, 403, 404, 503)}},
            "put": {
                "summary": "keep unsure live frames of this city for review, or stop (the operator's token only; "
                           "off by default); frames already waiting stay",
                "parameters": [_CITY], "security": _AUTH,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["sample"], "additionalProperties": False,
                    "properties": {"sample": {"type": "boolean"}}}}}},
                "responses": {"200": _json({"$ref": "#/components/schemas/ReviewSampling"}, "set"),
                              **_errors(400, 401, 403, 404, 413, 503)}}},
        "/api/cities/{city}/review/{id}/frame": {"get": {
            "summary": "a frame waiting for review, its bytes as the camera sent them",
            "parameters": [_CITY, frame_id], "security": _AUTH,
            "responses": {"200": {"description": "the frame", "content": {
                "image/jpeg": {}, "image/webp": {}, "image/png": {}}},
                "404": {**_ERR, "description": "no such frame waiting (reviewed, dismissed, or never kept)"},
                **_errors(400, 401, 403, 503)}}},
        "/api/cities/{city}/review/{id}": {"delete": {
            "summary": "take a frame out of the review queue and drop its bytes: corrected, when a correction of "
                       "the city has them, else dismissed",
            "parameters": [_CITY, frame_id], "security": _AUTH,
            "responses": {"204": {"description": "out of the queue"},
                          "404": {**_ERR, "description": "no such frame waiting"},
                          **_errors(400, 401, 403, 503)}}},
    }


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "SightScan gateway", "version": "1.0.0",
                 "description": "Cities, uploads, models and corrections (docs/corrections.md) of the SightScan "
                                "warehouse; live detection over the "
                                "websocket /ws/detect?city=NAME.\n\n" + (ws.__doc__ or "")},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the operator's SIGHTSCAN_API_TOKEN, or a user's own token "
                                                          "(POST /api/users): writes, and reading corrections"}},
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
                "CityRequested": {"type": "object", "required": ["id", "name", "status", "created"], "properties": {
                    "id": {"type": "integer"}, "name": {"type": "string", "description": "as stored (normalised)"},
                    "status": {"type": "string"}, "created": {"type": "boolean"}}},
                "Uploaded": {"type": "object", "required": ["id", "duplicate", "sha256"], "properties": {
                    "id": {"type": ["integer", "null"], "description": "null: the city already had these bytes"},
                    "duplicate": {"type": "boolean"}, "sha256": {"type": "string"},
                    "mime_type": {"enum": ["image/jpeg", "image/webp", "image/png"]},
                    "width": {"type": "integer"}, "height": {"type": "integer"}}},
                **_correction_schemas(),
                **_review_schemas(),
                "ModelMeta": {"type": "object", "properties": {
                    "version": {"type": "integer"}, "classes": {"type": "array", "items": {"type": "string"}},
                    "input_size": {"type": "integer"}, "metrics": {"type": "object"},
                    "figures": {"type": "array", "items": {"$ref": "#/components/schemas/Figure"}},
                    "sha256": {"type": "string"}, "download": {"type": "string"}}},
                **_local_inference_schema(),
            },
        },
        "paths": {
            "/api/cities": {
                "get": {"summary": "every city with its pipeline status", "responses": {"200": _json({
                    "type": "object", "required": ["cities"], "properties": {"cities": {
                        "type": "array", "items": {"$ref": "#/components/schemas/CityStatus"}}}}, "cities")}},
                "post": {"summary": "request a city (the pipeline starts from its change event); the operator's "
                                    "token only", "security": _AUTH,
                         "requestBody": {"required": True, "content": {"application/json": {"schema": {
                             "type": "object", "required": ["name"], "properties": {"name": {
                                 "type": "string", "minLength": 1, "maxLength": 200,
                                 "description": "normalised as the city path parameter; nothing printable: 400"}}}}}},
                         "responses": {"201": _json({"$ref": "#/components/schemas/CityRequested"}, "created"),
                                       "200": _json({"$ref": "#/components/schemas/CityRequested"},
                                                    "already there (the same name after normalisation)"),
                                       **_errors(400, 401, 403, 413, 503)}},
            },
            "/api/cities/{city}": {"get": {
                "summary": "one city's pipeline status", "parameters": [_CITY],
                "responses": {"200": _json({"$ref": "#/components/schemas/CityStatus"}, "status"),
                              **_errors(400, 404)}}},
            "/api/cities/{city}/images": {"post": {
                "summary": "upload an image (its size is checked from its header, then it is decoded off the "
                           "event loop; stored as sent); the operator's token only", "parameters": [_CITY],
                "security": _AUTH,
                "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                    "type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary",
                                  "description": "JPEG, WebP or PNG; at most GATEWAY_MAX_UPLOAD_BYTES bytes and "
                                                 "GATEWAY_MAX_PIXELS pixels"},
                        "sight": {"type": "string", "description": "the sight it shows, if known"}}}}}},
                "responses": {"201": _json({"$ref": "#/components/schemas/Uploaded"}, "stored"),
                              "200": _json({"$ref": "#/components/schemas/Uploaded"}, "duplicate, not stored"),
                              **_errors(400, 401, 403, 404, 413, 415, 503)}}},
            **_correction_paths(),
            **_review_paths(),
            "/api/cities/{city}/model": {"get": {
                "summary": "the latest model's version and metadata", "parameters": [_CITY],
                "responses": {"200": _json({"$ref": "#/components/schemas/ModelMeta"}, "model"),
                              **_errors(400, 404)}}},
            "/api/cities/{city}/model.onnx": {"get": _model_file()},
            "/api/local-inference": {"get": {
                "summary": "what the page needs to run the city's model itself (gateway/model_files.py): whether the "
                           "browser runtime (onnxruntime-web) is installed here and where its files are, the score "
                           "threshold the server applies, the frame budget, the websocket keep-alive",
                "responses": {"200": _json({"$ref": "#/components/schemas/LocalInference"}, "runtime")}}},
            "/ws/detect": {"get": {
                "summary": "websocket: binary frames in, JSON detections out (see the description)",
                "parameters": [{"name": "city", "in": "query", "required": True, "schema": {"type": "string"}},
                               {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                                "description": "GATEWAY_WS_TOKEN, when the gateway has one"}],
                "responses": {"101": {"description": "switching protocols"},
                              "400": {**_ERR, "description": "not a websocket handshake"},
                              "401": {**_ERR, "description": "GATEWAY_WS_TOKEN is set and was not sent"},
                              "403": {**_ERR, "description": "a browser page of another origin"}}}},
            "/asyncapi.json": {"get": {
                "summary": "the AsyncAPI 3.0 document of every Kafka topic: keys, payloads, who sends and who receives "
                           "(sightscan/asyncapi.py)",
                "responses": {"200": _json({
                    "type": "object", "required": ["asyncapi", "info", "channels", "operations"],
                    "properties": {"asyncapi": {"const": "3.0.0"}}}, "AsyncAPI document")}}},
            "/healthz": {"get": {"summary": "the process is up", "responses": {"200": _json({
                "type": "object", "required": ["ok"], "properties": {"ok": {"const": True}}}, "up")}}},
            "/readyz": {"get": {"summary": "PostgreSQL answers and model events are assigned", "responses": {
                s: _json({"type": "object", "required": ["ready", "checks"], "properties": {
                    "ready": {"type": "boolean"}, "checks": {"type": "object",
                                                             "additionalProperties": {"type": "string"}}}}, d)
                for s, d in (("200", "ready"), ("503", "not yet"))}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {}}}}}},
        },
    }
