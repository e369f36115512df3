// The model contract of sightscan/detector.py, in the browser: the same preprocessing and the same decoding as the
// server's, so a frame gets the same detections on either path. Loaded by the page's worker (local_worker.js).
//
// preprocess: an RGB or RGBA frame -> float32 [3, S, S] in 0..1, the whole frame stretched to S x S exactly as the
// server's Pillow does it (Image.resize(..., BILINEAR)): Pillow's two-pass convolution resampling (horizontal
// then vertical, or the other way round where Pillow 13 does), its triangle filter widened by the scale when
// shrinking, its coefficients in 22-bit fixed point, each pass rounded to 8 bits. Integer for integer the same
// pixels, so the model sees the same tensor (tests/gateway/test_browser_inference.py checks it).
// decode: the graph's outputs -> detections, with the server's rule: a score of 0 means "no detection" (the "no
// sight" rule is inside the graph), scores under the threshold and classes outside the list are dropped, boxes
// are clipped to 0..1; as JSON, scores and corners rounded to 4 decimals.
"use strict";

const SightDetector = (() => {
  const PRECISION_BITS = 22;  // 32 - 8 - 2, as Pillow
  const HALF = 1 << (PRECISION_BITS - 1);

  // Per output index: the first input index and the fixed-point weights of the inputs it averages.
  function coefficients(inSize, outSize) {
    const scale = inSize / outSize;
    const filterscale = Math.max(1, scale);
    const support = filterscale;  // the triangle filter's support is 1, widened when shrinking
    const ksize = Math.ceil(support) * 2 + 1;
    const bounds = new Int32Array(outSize * 2);
    const weights = new Int32Array(outSize * ksize);
    const k = new Float64Array(ksize);
    const ss = 1 / filterscale;
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const xmin = Math.max(0, Math.trunc(center - support + 0.5));
      const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
      let ww = 0;
      for (let x = 0; x < xmax; x++) {
        const t = Math.abs((x + xmin - center + 0.5) * ss);
        const w = t < 1 ? 1 - t : 0;
        k[x] = w; ww += w;
      }
      for (let x = 0; x < xmax; x++) {
        const w = ww !== 0 ? k[x] / ww : k[x];
        weights[xx * ksize + x] = Math.trunc(w < 0 ? w * (1 << PRECISION_BITS) - 0.5 : w * (1 << PRECISION_BITS) + 0.5);
      }
      bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
    }
    return { ksize, bounds, weights };
  }

  const clip8 = (ss) => { const v = ss >> PRECISION_BITS; return v < 0 ? 0 : v > 255 ? 255 : v; };

  // Images here are Uint32Array, one pixel each, R | G << 8 | B << 16 (an RGBA frame's own bytes on the
  // little-endian machines browsers run on, alpha ignored): one load per pixel instead of three.
  function pack(pixels, width, height, channels) {
    if (channels === 4 && pixels.byteOffset % 4 === 0) {
      return new Uint32Array(pixels.buffer, pixels.byteOffset, width * height);
    }
    const out = new Uint32Array(width * height);
    for (let i = 0, p = 0; i < out.length; i++, p += channels) {
      out[i] = pixels[p] | (pixels[p + 1] << 8) | (pixels[p + 2] << 16);
    }
    return out;
  }

  // One horizontal pass: rows [first, first + rows) of src (width wide) -> rows x size.
  function horizontal(src, width, first, rows, size) {
    const { ksize, bounds, weights } = coefficients(width, size);
    const out = new Uint32Array(rows * size);
    for (let y = 0; y < rows; y++) {
      const inRow = (y + first) * width, outRow = y * size;
      for (let xx = 0; xx < size; xx++) {
        const xmin = bounds[xx * 2], xmax = bounds[xx * 2 + 1], kOff = xx * ksize;
        let s0 = HALF, s1 = HALF, s2 = HALF, p = inRow + xmin;
        for (let x = 0; x < xmax; x++, p++) {
          const w = weights[kOff + x], v = src[p];
          s0 += (v & 255) * w; s1 += ((v >>> 8) & 255) * w; s2 += ((v >>> 16) & 255) * w;
        }
        out[outRow + xx] = clip8(s0) | (clip8(s1) << 8) | (clip8(s2) << 16);
      }
    }
    return out;
  }

  // One vertical pass with precomputed coefficients whose row bounds are relative to src's first row:
  // src (width wide) -> size rows x width.
  function vertical(src, width, vert, size) {
    const { ksize, bounds, weights } = vert;
    const out = new Uint32Array(size * width);
    for (let yy = 0; yy < size; yy++) {
      const ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1], kOff = yy * ksize;
      for (let xx = 0; xx < width; xx++) {
        let s0 = HALF, s1 = HALF, s2 = HALF, p = ymin * width + xx;
        for (let y = 0; y < ymax; y++, p += width) {
          const w = weights[kOff + y], v = src[p];
          s0 += (v & 255) * w; s1 += ((v >>> 8) & 255) * w; s2 += ((v >>> 16) & 255) * w;
        }
        out[yy * width + xx] = clip8(s0) | (clip8(s1) << 8) | (clip8(s2) << 16);
      }
    }
    return out;
  }

  // pixels: Uint8Array or Uint8ClampedArray of width x height x channels (3: RGB, 4: RGBA, alpha ignored).
  // Returns Float32Array [3, size, size].
  function preprocess(pixels, width, height, channels, size) {
    const needH = width !== size, needV = height !== size;
    // Pillow (13) runs the vertical pass first when the height shrinks by more than twice what the width does.
    const horizontalFirst = !(height - size > 0 && height - size > (width - size) * 2);
    let img = pack(pixels, width, height, channels);
    if (horizontalFirst) {
      let first = 0, rows = height;
      const vert = needV ? coefficients(height, size) : null;
      if (needH) {
        if (vert) {  // only the rows the vertical pass reads, and its bounds relative to them
          first = vert.bounds[0];
          rows = vert.bounds[size * 2 - 2] + vert.bounds[size * 2 - 1] - first;
          for (let i = 0; i < size; i++) vert.bounds[i * 2] -= first;
        }
        img = horizontal(img, width, first, rows, size);
      }
      if (needV) img = vertical(img, needH ? size : width, vert, size);
    } else {
      if (needV) img = vertical(img, width, coefficients(height, size), size);
      if (needH) img = horizontal(img, width, 0, size, size);
    }
    const plane = size * size;
    const out = new Float32Array(3 * plane);
    for (let o = 0; o < plane; o++) {
      const v = img[o];
      out[o] = (v & 255) / 255; out[plane + o] = ((v >>> 8) & 255) / 255; out[2 * plane + o] = ((v >>> 16) & 255) / 255;
    }
    return out;
  }

  const round4 = (v) => Math.round(v * 1e4) / 1e4;

  // boxes: Float32Array [K*4]; scores: Float32Array [K]; classes: BigInt64Array or Int32Array [K] (one image).
  // exact: the values unrounded (the parity test); otherwise as the server's JSON.
  function decode(boxes, scores, classes, names, threshold, exact) {
    const found = [];
    for (let k = 0; k < scores.length; k++) {
      const score = scores[k], idx = Number(classes[k]);
      if (score <= 0 || score < threshold || !(idx >= 0 && idx < names.length)) continue;
      const box = [];
      for (let j = 0; j < 4; j++) {
        const v = boxes[k * 4 + j];
        box.push(v < 0 ? 0 : v > 1 ? 1 : v);
      }
      found.push(exact ? { class_index: idx, sight: names[idx], score, box }
                       : { sight: names[idx], score: round4(score), box: box.map(round4) });
    }
    return found;
  }

  return { preprocess, decode };
})();

if (typeof module !== "undefined") module.exports = SightDetector;  // for Node, when checking by hand
