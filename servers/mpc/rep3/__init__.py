"""Three-server engine on 2-out-of-3 replicated shares of Z_2^64: no dealer, numpy only.

With three servers of which no two collude (an honest majority), nothing
needs a trusted dealer: products take one round of resharing, correlated
randomness comes from keys each pair of servers shares, and the third
server plays the masking role in truncation. Ring Z_2^64 as int64, 16
fractional bits, inputs and outputs as additive shares (ppml's wire
contract, one share per server). Semi-honest: a server that deviates can
change results (see SECURITY.md).

Modules, one concept each:

* :mod:`.rounds` -- protocols as generators of rounds; :func:`.rounds.gather`
  runs independent ones side by side in the same rounds;
* :mod:`.keys` -- pairwise keys (one round at session start) and their
  streams: random and zero sharings, pair-only randomness;
* :mod:`.rss` -- the sharing and its arithmetic and XOR forms: local linear
  operations, one-round products (elementwise, matmul, AND), resharing;
* :mod:`.compare` -- the sign of a shared value (binary adder circuit, 8 rounds);
* :mod:`.trunc` -- truncation that cannot wrap (2 rounds);
* :mod:`.select` -- bit times value (2 rounds), ReLU with truncation;
* :mod:`.ranges` -- whether a value lies outside public bounds, exact (9 rounds);
* :mod:`.divide` -- division by a public integer that cannot wrap (2 rounds),
  opening a sum re-randomised (1 round): a federation's average;
* :mod:`.accuracy` -- shares of a model's correct count (argmax or sign);
* :mod:`.engine` -- model setup and the forward of a layer chain;
* :mod:`.local` -- three parties in one process (tests, benchmarks).

Cost for SecureML Network A per forward: 25 rounds; per image and party
about 46 kB sent (the sign circuits are 80 % of it).
"""
