// Round trips of the share encoding over grids of values and party counts (node --test).

import assert from "node:assert/strict";
import { test } from "node:test";

import * as s from "../shares.js";

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;

test("reconstruct(share(x, n)) == x for ring elements at the edges and in between", () => {
  const elements = [0n, 1n, -1n, INT64_MIN, INT64_MAX, 123456789n, -987654321n];
  for (const parties of [2, 3, 5]) {
    for (let round = 0; round < 20; round += 1) {
      const parts = s.share(elements, parties);
      assert.equal(parts.length, parties);
      assert.deepEqual(s.reconstruct(parts), elements);
      for (const part of parts) {
        for (const e of part) assert.ok(e >= INT64_MIN && e <= INT64_MAX);
      }
    }
  }
});

test("masks cover the whole ring (both signs, large magnitudes)", () => {
  const masks = s.share(new Array(2000).fill(0n), 2)[1];
  assert.ok(masks.some((m) => m < 0n) && masks.some((m) => m > 0n));
  // a value drawn from only 53 bits would never reach 2^62 in magnitude
  assert.ok(masks.filter((m) => m > 2n ** 62n || m < -(2n ** 62n)).length > 500);
});

test("encode/decode round trip within 2^-17, half to even like numpy.rint", () => {
  for (const v of [0, 1, -1, 0.5, -0.5, 3.14159, -2.71828, 1e-6, 12345.678, -(2 ** 29)]) {
    assert.ok(Math.abs(s.decode(s.encode(v)) - v) <= 2 ** -17);
  }
  assert.equal(s.encode(2.5 / 65536), 2n);
  assert.equal(s.encode(3.5 / 65536), 4n);
  assert.equal(s.encode(-2.5 / 65536), -2n);
  assert.equal(s.encode(-1.5 / 65536), -2n);
  assert.throws(() => s.encode(Number.NaN), RangeError);
  assert.throws(() => s.encode(Infinity), RangeError);
  assert.throws(() => s.encode(2 ** 30), RangeError);
});

test("bytes are little-endian int64", () => {
  const bytes = s.toBytes([1n, -2n]);
  assert.deepEqual([...bytes], [1, 0, 0, 0, 0, 0, 0, 0, 254, 255, 255, 255, 255, 255, 255, 255]);
  assert.deepEqual(s.fromBytes(bytes), [1n, -2n]);
});

test("nested arrays: shape, C-order flattening and back", () => {
  const x = [[[1, 2], [3, 4], [5, 6]]];
  assert.deepEqual(s.shapeOf(x), [1, 3, 2]);
  assert.deepEqual(s.flatten(x), [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(s.unflatten(s.flatten(x), [1, 3, 2]), x);
  assert.throws(() => s.shapeOf([[1, 2], [3]]), TypeError);
  assert.throws(() => s.shapeOf([[1, "2"]]), TypeError);
});
