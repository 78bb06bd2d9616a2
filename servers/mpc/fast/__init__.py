"""Dealer-assisted two-party inference engine on masked wires (numpy + AES), no CrypTen.

Two compute parties and a dealer that sees no data, no shares of data and no
model. Ring Z_2^64 as int64, 16 fractional bits, inputs and outputs as
additive shares (ppml's wire contract). Every secret random value comes from
AES-CTR with a 256-bit key from ``os.urandom``.

Modules, one concept each:

* :mod:`.prg` -- keyed AES-CTR streams, key derivation, fixed-key AES (MMO)
  PRG for DCF trees;
* :mod:`.dcf` -- vectorised distributed comparison functions (BCG+21), vector
  payloads;
* :mod:`.gates` -- FSS gates on masked wires: ReLU fused with truncation (a
  one-bit DCF, then one opened masked sign bit), truncation alone from the
  mask's top bit (no DCF; stochastic rounding, error < 1 ulp, no wrap errors
  within one bit of headroom);
* :mod:`.spline` -- a piecewise-linear FSS spline gate (BCG+21 style): one
  DCF of depth ``n + 1`` with payload ``(1, r)`` evaluated at one point per
  breakpoint plus one, one opening, output at ``2^(2f)``;
* :mod:`.activations` -- GELU, tanh and sigmoid as spline tables, each within
  1e-2 on ``|x| < 4096`` (8, 10 and 6 breakpoints); exp on ``x <= 0`` and the
  reciprocal on ``[1, 64]`` within 1e-3 (17 and 20); softmax's row
  reciprocal on ``[1, 130]`` within 1e-3 relative (63);
* :mod:`.spline_fit` -- how those tables were fitted (offline);
* :mod:`.gate_table` -- every gate kind by name (the one table the plan and
  the engine ask);
* :mod:`.linear` -- Linear / Conv2d with weights masked once (``W - B`` opened
  at model registration), int64 matmul via torch;
* :mod:`.pooling` -- pooling windows over shares, the max tournament's sizes;
* :mod:`.tensor_ops` -- a transformer's linear half: MatMul of two
  activations, Transpose, Reshape, Scale, Bias, Mean (Linear on tokens is
  :class:`.linear.Linear` with ``lead``);
* :mod:`.beaver` -- matrix and element-wise Beaver triples: a product of two
  secret activations in one opening;
* :mod:`.nodes` -- the public model: node kinds (weighted layers, ReLU, Add,
  pooling, Flatten, Softmax, the tensor nodes) and :class:`~.nodes.ModelSpec`, a chain
  or a DAG;
* :mod:`.steps` -- a plan's values and steps (openings, gates, products,
  local maps);
* :mod:`.graph` -- a model's plan: lazy scales, shared openings, gates,
  the dealer material one forward needs;
* :mod:`.bundle` -- what the dealer sends: per-model setup, per-forward
  bundles and their (de)serialisation;
* :mod:`.engine` -- dealer preprocessing, party forward (runs the plan), comm
  counting;
* :mod:`.local` -- two parties in one process (queues, threads) for tests.

Chains and residual networks (DAGs) run alike; a chain's plan is exactly
the chain engine's (same rounds, bytes and dealer material). A transformer's
linear half runs too (an attention block without softmax in
tests/unit/test_fast_tensor_ops.py: 14 rounds, 13,600 bytes per party per
image online, 34 KB of dealer material per party per image; 957 KB while
truncations took DCF keys). GELU, Tanh and Sigmoid run as spline gates (997 bytes
of key per element and party for inputs ``|x| < 4096``, GELU's quadratic
pieces 1,245; one round each, or two as one-bit gates in large layers); Softmax over rows of up to
128 (a ReLU tournament for the row maximum, exp and row-reciprocal splines,
an element-wise Beaver product: ``2 ceil(log2 n) + 5`` rounds) and LayerNorm
(an element-wise Beaver square, an rsqrt spline, two element-wise products:
10 rounds) complete a transformer (graph.py states each one's error bound),
so :func:`.service.spec.fast_model` maps training/transformer.py's models
and 2-server clusters serve them on this engine.

Cost for SecureML Network A per forward, per party: 8 rounds, 8 * (784 +
4 * 128 + 10) + 2 * 128 / 8 = 10,480 bytes per image online; 205,296 bytes
per image of dealer material at the default gate depth 47 (DCF keys are
89 % of it; 215,390 while the output's truncation took a DCF, 243,552
before the one-bit keys' early termination, 458,846 before the one-bit
DReLU gate, with 6 rounds).

ResNet-20 shape on CIFAR (bench/fast_resnet.py, default parameters): 60
rounds and 3.03 MB sent per party per image online; 146 MB of dealer
material per party per image (188,416 ReLU gates, 92 % of it DCF keys).
A spline making 8,192 or more comparisons per sample is a one-bit gate
(spline.py: one more round each, smaller keys and far less evaluation).
A BERT-tiny-shaped encoder (bench/fast_transformer.py): 129 rounds, 15.1 MB
sent per party and 140 MB of dealer material per party and request (191 MB
while comparisons read every input bit, 772 MB while truncations took
one-bit DCFs, with 156 rounds).

Wiring it into a server (:mod:`.service`: ``dealing.py``, ``pool.py``, ``party.py``):

* dealer, once per model: draw a model key (:func:`.prg.new_key`), keep it
  secret and durable, send each party its :class:`.engine.ModelSetup`;
* parties, once per model: :meth:`.engine.PartyModel.open` (one round); keep
  their weight and bias shares and ``W^``. ``W^`` is not secret between the
  parties but must never reach the dealer (dealer + ``W^`` = the weights);
  likewise no opened wire value may reach the dealer;
* dealer, ahead of requests: :meth:`.engine.Dealer.preprocess` for the batch
  sizes the leader will use, one :class:`.engine.Bundle` per party over the
  authenticated dealer link; a bundle is single-use (reusing one reveals the
  difference of two inputs), so a party pops it from a queue and deletes it;
* party, per job: :func:`.engine.prepare` (may run ahead) and
  :func:`.engine.forward` with an ``exchange`` callable over the encrypted
  party-to-party link, in the same order on both parties.
"""
