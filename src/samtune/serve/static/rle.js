// COCO RLE -> row-major masks, for the page. The API sends masks as pycocotools' compressed
// RLE ({"size": [H, W], "counts": "..."}): run lengths in column-major order, starting with
// zeros, each run coded in 5-bit groups (the last with 0x20 clear), runs after the second as
// differences from the run two before.
"use strict";

function rleCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// -> Uint8Array of H*W (row-major), 1 inside the mask
function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  const out = new Uint8Array(h * w);
  let i = 0, value = 0;
  for (const run of counts) {
    if (value) {
      for (let j = i; j < i + run; j++) {
        const row = j % h, col = (j - row) / h;
        out[row * w + col] = 1;
      }
    }
    i += run;
    value = 1 - value;
  }
  return out;
}
