// Package peertest starts real mail and DNS peers on loopback addresses for
// the tests of this module.
//
// The delivery engine is only worth trusting if it is proven against the
// software it will meet in production, not against mocks written by the same
// hands as the engine. This package therefore runs the real thing, on this
// machine, inside the test process's lifetime:
//
//   - smtp-sink (from Postfix) as a fast SMTP/LMTP sink and fault injector
//     (StartSink);
//   - a private Postfix instance as a receiving MX with STARTTLS, implicit
//     TLS, PIPELINING, CHUNKING and SMTPUTF8, and, with Users, as a relay
//     that requires SMTP AUTH (StartPostfix);
//   - Dovecot as an LMTP server with a fixed set of users (StartDovecot);
//   - Knot DNS as an authoritative server that signs zones (StartKnot);
//   - unbound as a DNSSEC validating resolver for those zones (StartUnbound);
//   - a test PKI made with crypto/x509 (NewCA);
//   - a TCP proxy that adds latency and counts round trips, since this
//     kernel has no netem (StartDelayProxy).
//
// Every peer listens on a fresh loopback port (FreePort), lives in its own
// temporary directory, runs in the foreground in its own session and process
// group, and is stopped, waited for and removed by t.Cleanup. When a test
// fails, the tail of each peer's log is written to the test log.
//
// Every Start function first calls Need: a missing binary skips the test when
// it is run by hand, and fails it when the environment variable CI is "true",
// so that a green CI run proves that the peers really ran.
//
// Only loopback addresses (127.0.0.0/8 and ::1) are ever used, plus network
// namespaces that a test makes itself (NewNetns). The tests must run as root:
// the daemons bind ports, switch users and, for namespaces, need
// CAP_SYS_ADMIN.
package peertest
