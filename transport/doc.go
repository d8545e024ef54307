// Package transport is the SMTP and LMTP client of the smtp app: it speaks
// to one remote server over a connection, phase by phase, under the app's
// timeouts and TLS settings.
package transport
