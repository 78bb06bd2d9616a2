#!/usr/bin/env node
// node predict.js --config cluster.toml --model <id> --input input.json [--timeout 30]
//
// input.json: a nested array of numbers, shape (rows, *input_shape) or one
// sample of shape input_shape. Prints the decoded output as JSON (same
// nesting: rows of outputs, or one output for one sample). On failure it
// prints the failing server's status, ppml-error-code and message and exits 1.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { Cluster, PpmlError } from "./ppml.js";
import { shapeOf } from "./shares.js";

const USAGE =
  "usage: node predict.js --config cluster.toml --model <id> --input input.json " +
  "[--timeout seconds] [--token token] [--protos dir] [--insecure]";

async function main() {
  const { values } = parseArgs({
    options: {
      config: { type: "string" },
      model: { type: "string" },
      input: { type: "string" },
      timeout: { type: "string", default: "30" },
      token: { type: "string" },
      protos: { type: "string" },
      insecure: { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help || !values.config || !values.model || !values.input) {
    console.error(USAGE);
    return values.help ? 0 : 2;
  }
  const timeoutMs = Number(values.timeout) * 1000;
  if (!(timeoutMs > 0)) throw new Error(`--timeout must be a positive number of seconds`);
  const input = JSON.parse(readFileSync(values.input, "utf8"));
  const cluster = Cluster.fromConfig(values.config, {
    token: values.token,
    protoRoot: values.protos,
    insecure: values.insecure,
  });
  try {
    const model = await cluster.getModel(values.model, { timeoutMs });
    const sampleShape = model.architecture.input_shape.map(Number);
    const single = shapeOf(input).length === sampleShape.length;
    const { output } = await cluster.predict(values.model, single ? [input] : input, { timeoutMs });
    process.stdout.write(`${JSON.stringify(single ? output[0] : output)}\n`);
    return 0;
  } finally {
    cluster.close();
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(err instanceof PpmlError ? err.message : String(err));
    process.exitCode = 1;
  },
);
