// Package nixreplay is a test helper that speaks to a binary cache the way
// a given Nix (or Lix) client version does: its request sequence, headers,
// HEAD against GET, PUT bodies and their encodings, upload order, and what
// it concludes from each status code, including retries and resumes.
//
// Why: the cache must serve clients from Nix 2.8 to 2.35 and Lix, but only
// Nix 2.8 runs here. Each Profile models one version range and cites the
// source lines it follows; the "Nix 2.8" profile is checked against the
// real client in TestNix28GroundTruth, which keeps the model honest where
// it can be checked at all.
//
// The replayer runs requests one at a time. Where the real client runs
// them in parallel (narinfo queries, per-path uploads from 2.11), the
// replayer's order is one the real client could produce, and Trace
// comparison should use the order classes of Normalize.
package nixreplay
