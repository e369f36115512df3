-- The graph a page runs itself (GET /api/cities/{city}/model.onnx) when it is not the one the gateway serves. The
-- trainer serves int8 where it answers like fp32 on the held-out split (trainer/quantize.py), but WebAssembly runs
-- int8 1.3-1.6x slower than fp32 (bench/browser/RESULTS.md), so it keeps the fp32 graph here for pages. No row: pages
-- get the model's own graph. Not in the CDC publication (0002_cdc.sql names its tables): the model's row is the event.
CREATE TABLE model_browser_graphs (
    model_id  bigint  PRIMARY KEY REFERENCES models (id) ON DELETE CASCADE,
    onnx      bytea   NOT NULL
);
