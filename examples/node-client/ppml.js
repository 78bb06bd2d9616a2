// A ppml prediction client written from the wire contract in proto/ (proto/README.md).
//
//   const cluster = Cluster.fromConfig("cluster.toml");
//   const { output } = await cluster.predict(modelId, [[0.1, 0.2, ...]], { timeoutMs: 30000 });
//   cluster.close();
//
// What travels: server i (the i-th [[parties]] entry of cluster.toml) receives
// only share i of the input, over TLS against the cluster CA, with the
// client token as `authorization: Bearer <token>`.

import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { parse as parseToml } from "smol-toml";

import * as shares from "./shares.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** The repository's proto/ folder: imports are written "ppml/v1/common.proto". */
export const DEFAULT_PROTO_ROOT = resolve(HERE, "..", "..", "proto");
const MAX_MESSAGE_BYTES = 512 * 1024 * 1024; // what the servers accept

/** Read cluster.toml: servers in rank order, CA and client token (paths relative to the file). */
export function loadConfig(path) {
  const raw = parseToml(readFileSync(path, "utf8"));
  const base = dirname(resolve(path));
  const at = (p) => (p === undefined ? undefined : isAbsolute(p) ? p : resolve(base, p));
  const parties = raw.parties;
  if (!Array.isArray(parties) || parties.length < 2) {
    throw new Error(`${path}: needs at least two [[parties]]`);
  }
  return {
    parties: parties.map((p, rank) => ({
      rank,
      name: p.name ?? `server-${rank}`,
      grpcAddress: p.grpc_address,
    })),
    caCert: at(raw.cluster?.ca_cert),
    tokenFile: at(raw.client?.token_file),
  };
}

/** Load the ppml.v1 services this client uses. */
export function loadProtos(protoRoot = DEFAULT_PROTO_ROOT) {
  const definition = protoLoader.loadSync(["ppml/v1/inference.proto", "ppml/v1/registry.proto"], {
    includeDirs: [protoRoot],
    keepCase: true, // field names as in the .proto files: request_id, fractional_bits
    longs: String, // int64 fields (shapes) arrive as decimal strings: exact
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).ppml.v1;
}

/** A ppml error: the gRPC status plus the `ppml-error-code` trailer. */
export class PpmlError extends Error {
  constructor(server, err) {
    const errorCode = err.metadata?.get("ppml-error-code")?.[0]?.toString() ?? "";
    const status = grpc.status[err.code] ?? String(err.code);
    super(`${server}: ${status}${errorCode ? ` (${errorCode})` : ""}: ${err.details}`);
    this.server = server;
    this.code = err.code;
    this.status = status;
    this.errorCode = errorCode;
    this.details = err.details;
  }
}

/** Start a unary call; returns { promise, call } so the caller can cancel it. */
function unary(client, method, request, metadata, deadline, server) {
  let call;
  const promise = new Promise((resolvePromise, reject) => {
    call = client[method](request, metadata, { deadline }, (err, reply) => {
      if (err) reject(err.code === undefined ? err : new PpmlError(server, err));
      else resolvePromise(reply);
    });
  });
  return { promise, call };
}

function toShareTensor(shape, elements) {
  return {
    shape: shape.map(String),
    dtype: "DTYPE_RING64",
    data: shares.toBytes(elements),
    fractional_bits: shares.FRACTIONAL_BITS, // 0 (the proto3 default) is rejected
  };
}

function fromShareTensor(tensor, server) {
  if (tensor.dtype !== "DTYPE_RING64" || tensor.fractional_bits !== shares.FRACTIONAL_BITS) {
    throw new Error(`${server}: unexpected output encoding ${tensor.dtype}/${tensor.fractional_bits}`);
  }
  const shape = tensor.shape.map(Number);
  const elements = shares.fromBytes(tensor.data);
  if (elements.length !== shape.reduce((a, b) => a * b, 1)) {
    throw new Error(`${server}: output shape ${shape} does not match ${elements.length} values`);
  }
  return { shape, elements };
}

export class Cluster {
  constructor(parties, { caCert, token, protoRoot = DEFAULT_PROTO_ROOT, insecure = false }) {
    const v1 = loadProtos(protoRoot);
    const credentials = insecure
      ? grpc.credentials.createInsecure()
      : grpc.credentials.createSsl(readFileSync(caCert));
    const options = {
      "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
      "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    };
    this.servers = parties.map((p) => ({
      name: p.name,
      inference: new v1.Inference(p.grpcAddress, credentials, options),
      registry: new v1.ModelRegistry(p.grpcAddress, credentials, options),
    }));
    this.token = token;
  }

  /** Connect to every server of a cluster.toml with its [client] token (or `token`). */
  static fromConfig(path, { token, protoRoot, insecure = false } = {}) {
    const config = loadConfig(path);
    if (!insecure && !config.caCert) throw new Error(`${path}: [cluster] ca_cert is missing`);
    const secret = token ?? (config.tokenFile ? readFileSync(config.tokenFile, "utf8").trim() : "");
    return new Cluster(config.parties, { caCert: config.caCert, token: secret, protoRoot, insecure });
  }

  get parties() {
    return this.servers.length;
  }

  metadata() {
    const metadata = new grpc.Metadata();
    metadata.add("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  /** The model's public metadata (architecture) from server 0. */
  async getModel(modelId, { timeoutMs = 30000 } = {}) {
    const server = this.servers[0];
    const request = { model_id: modelId };
    const deadline = Date.now() + timeoutMs;
    return unary(server.registry, "GetModel", request, this.metadata(), deadline, server.name)
      .promise;
  }

  /**
   * Encrypted prediction of `rows`, a nested array of shape (rows, *input_shape).
   * Returns { output: nested array (rows, *output_shape), requestId, batchRequests }.
   */
  async predict(modelId, rows, { timeoutMs = 30000, requestId = randomUUID().replaceAll("-", "") } = {}) {
    const shape = shares.shapeOf(rows);
    const encoded = shares.flatten(rows).map(shares.encode);
    const parts = shares.share(encoded, this.parties);
    const deadline = Date.now() + timeoutMs; // one deadline for every server
    // All N calls must be in flight together: each one blocks until every
    // server holds its share and the MPC job has run.
    const calls = this.servers.map((server, rank) =>
      unary(
        server.inference,
        "Predict",
        { request_id: requestId, model_id: modelId, input: toShareTensor(shape, parts[rank]) },
        this.metadata(),
        deadline,
        server.name,
      ),
    );
    let replies;
    try {
      replies = await Promise.all(calls.map((c) => c.promise));
    } catch (err) {
      for (const c of calls) c.call.cancel(); // fail fast; the servers drop it together
      throw err;
    }
    const outputs = replies.map((reply, rank) => {
      const server = this.servers[rank].name;
      if (reply.request_id !== requestId) throw new Error(`${server}: answered another request`);
      return fromShareTensor(reply.output, server);
    });
    const outShape = outputs[0].shape;
    if (outputs.some((o) => o.shape.join() !== outShape.join())) {
      throw new Error("servers returned output shares of different shapes");
    }
    const total = shares.reconstruct(outputs.map((o) => o.elements));
    return {
      output: shares.unflatten(total.map(shares.decode), outShape),
      requestId,
      batchRequests: Math.min(...replies.map((reply) => reply.batch_requests)),
    };
  }

  close() {
    for (const server of this.servers) {
      server.inference.close();
      server.registry.close();
    }
  }
}
