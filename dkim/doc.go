// Package dkim signs outgoing mail with DKIM (RFC 6376, RSA-SHA256 and
// Ed25519-SHA256 of RFC 8463) and owns the signing keys: it makes them on
// first use and keeps them in Caddy's storage (as Caddy does certificates),
// prints or publishes their DNS records, and rotates them.
//
// Signing streams: Signer.Sign wraps the message reader the queue copies
// into its store; the bytes pass through unchanged while the body hash is
// computed, and at EOF the DKIM-Signature fields to prepend are ready. Only
// the header section is held (bounded).
//
// The signing code is this package's own, not github.com/emersion/go-msgauth's
// dkim.Signer, which it is tested against. go-msgauth's signer streams the
// body, but its relaxed body canonicalization holds every CR and LF of a
// run of empty lines until the next non-empty line (measured: 69 MiB of
// heap for a body of 20 MiB of empty lines, against 77 KiB here), it needs the header fields to
// sign before it has seen the header, it hashes the body once per
// signature (twice for RSA and Ed25519 together) and runs a goroutine per
// signature behind an io.Pipe. Here one body hash serves every signature
// of a message, with a fixed-size buffer.
//
// Storage layout (certmagic.Storage keys):
//
//	smtp/dkim/<domain>/<selector>/key.pem   PKCS #8 private key
//	smtp/dkim/<domain>/<selector>/key.json  {"domain", "selector", "algorithm", "created", "public_key"}
//	smtp/dkim/<domain>/_rotation.json       rotation state of the domain's signers (see rotationState)
//
// Keys are made under the storage lock "smtp_dkim_<domain>_<selector>",
// and the rotation state is changed under "smtp_dkim_<domain>", so that
// instances sharing a storage make one key, not two, and agree on the
// selector that signs.
package dkim
