// Fixed-point encoding and additive secret sharing over Z_2^64 (proto/README.md).
//
// Ring elements are BigInts in the signed int64 range (two's complement).
//   encode(v) = round(v * 2^16)   (half to even, like the Python SDK's numpy.rint)
//   share(e, n) = [s_0, ..., s_{n-1}] with s_0 + ... + s_{n-1} = e (mod 2^64),
//     s_1 .. s_{n-1} uniform over all 2^64 values (8 bytes of crypto.randomBytes each)
//   reconstruct(shares) = their sum mod 2^64;  decode(e) = e / 2^16
// Pure functions apart from the CSPRNG draw; inputs are never modified.

import { randomBytes } from "node:crypto";

export const FRACTIONAL_BITS = 16;
const SCALE = 2 ** FRACTIONAL_BITS;
// The Python SDK refuses |v| >= 2^30: CrypTen multiplies two encodings before
// truncating, so larger values can overflow int64 inside the MPC.
export const MAX_ABS_VALUE = 2 ** 30;

function roundHalfEven(x) {
  const r = Math.round(x); // rounds halves towards +infinity
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** One float -> one ring element; |decode(encode(v)) - v| <= 2^-17. */
export function encode(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new RangeError(`cannot encode ${value}: only finite numbers`);
  }
  if (Math.abs(value) >= MAX_ABS_VALUE) {
    throw new RangeError(`cannot encode ${value}: magnitude must be below 2^30`);
  }
  return BigInt(roundHalfEven(value * SCALE)); // exact: |v * 2^16| < 2^46
}

/** One ring element -> float (signed fixed point). */
export function decode(element) {
  return Number(BigInt.asIntN(64, element)) / SCALE;
}

/** A uniform ring element from the OS CSPRNG. */
export function randomElement() {
  return randomBytes(8).readBigInt64LE(0);
}

/** Split ring elements into `parties` additive shares: result[i][k] is share i of values[k]. */
export function share(elements, parties) {
  if (!Number.isInteger(parties) || parties < 2) {
    throw new RangeError("secret sharing needs at least 2 parties");
  }
  const out = Array.from({ length: parties }, () => new Array(elements.length));
  elements.forEach((element, k) => {
    let first = BigInt.asIntN(64, element);
    for (let i = 1; i < parties; i += 1) {
      const mask = randomElement();
      out[i][k] = mask;
      first = BigInt.asIntN(64, first - mask);
    }
    out[0][k] = first;
  });
  return out;
}

/** Sum shares element-wise mod 2^64: reconstruct(share(x, n)) equals x. */
export function reconstruct(shares) {
  if (shares.length === 0) throw new RangeError("no shares to reconstruct");
  return shares[0].map((_, k) =>
    shares.reduce((sum, part) => BigInt.asIntN(64, sum + part[k]), 0n),
  );
}

/** Ring elements -> little-endian int64 bytes (ShareTensor.data). */
export function toBytes(elements) {
  const buffer = Buffer.alloc(8 * elements.length);
  elements.forEach((element, k) => buffer.writeBigInt64LE(element, 8 * k));
  return buffer;
}

/** ShareTensor.data -> ring elements. */
export function fromBytes(buffer) {
  if (buffer.length % 8 !== 0) throw new RangeError(`${buffer.length} bytes is not int64 data`);
  const out = new Array(buffer.length / 8);
  for (let k = 0; k < out.length; k += 1) out[k] = buffer.readBigInt64LE(8 * k);
  return out;
}

// ---------------------------------------------------------------- nested arrays

/** The shape of a rectangular nested array of numbers, e.g. [[1,2],[3,4]] -> [2, 2]. */
export function shapeOf(nested) {
  const shape = [];
  let level = nested;
  while (Array.isArray(level)) {
    shape.push(level.length);
    if (level.length === 0) break;
    level = level[0];
  }
  const check = (node, depth) => {
    if (depth === shape.length) {
      if (typeof node !== "number") throw new TypeError("input must be an array of numbers");
      return;
    }
    if (!Array.isArray(node) || node.length !== shape[depth]) {
      throw new TypeError("input must be a rectangular (not ragged) nested array");
    }
    node.forEach((child) => check(child, depth + 1));
  };
  check(nested, 0);
  return shape;
}

/** Nested array -> flat list in C order (outermost dimension first). */
export function flatten(nested) {
  return Array.isArray(nested) ? nested.flatMap(flatten) : [nested];
}

/** Flat list in C order -> nested array of the given shape. */
export function unflatten(flat, shape) {
  if (shape.length === 0) return flat[0];
  const [outer, ...inner] = shape;
  const step = inner.reduce((a, b) => a * b, 1);
  return Array.from({ length: outer }, (_, i) =>
    unflatten(flat.slice(i * step, (i + 1) * step), inner),
  );
}
