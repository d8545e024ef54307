// Package l4submission holds `layer4.handlers.smtp_submission`, a caddy-l4
// connection handler that speaks SMTP to clients and puts each message it
// receives in the `smtp` app's queue.
//
// It is a package of its own because it is the one part of this module
// that needs caddy-l4 and an SMTP server: the `smtp` app does not depend on
// it (it depends on the app), and a Caddy built without caddy-l4 has no
// use for it. Build it in by importing it (xcaddy:
// `--with github.com/seed7b014b84/caddy-smtp/l4submission`).
//
// # Into the queue
//
// The message streams, after the Received header the handler adds, into
// the queue; the end of its data is answered "250 2.0.0 queued as ID" only
// once the queue has it, with its envelope, on stable storage. From then
// on the queue delivers it, retries it and reports on it (delivery status
// notifications to the sender), as a queueing MTA does: the client's duty
// ends with the 250. Nothing is held anywhere but in the queue: no spool
// file, nothing in a temporary folder.
//
// A recipient whose domain does not exist (550 5.1.2) or takes no mail
// (null MX, 556 5.1.10) is refused at RCPT, when the app knows it (from
// the resolver, most often its cache), rather than taken and bounced. A
// queue that is full (quota, disk) answers 452 4.3.1, one that cannot be
// reached 451 4.3.0: the client keeps the message and retries.
//
// # No open relay
//
// A client may send mail only when it authenticated (AUTH PLAIN or LOGIN
// against `users`) or when its address is in `relay_networks`; other
// clients are refused at MAIL. A config with neither is refused when it
// loads, since it would make an open relay. A handler cannot see the
// matchers of the route it is on (caddy-l4 provisions a route's matchers
// and handlers as separate modules and passes nothing between them), so a
// `remote_ip` matcher in front of the handler cannot stand for
// relay_networks: the handler has its own list, checked against the
// client's address (the one the proxy_protocol handler sets, when it runs
// first). A range wider than /8 (IPv4) or /32 (IPv6, unique local
// addresses aside) is refused too.
//
// # Hostile clients
//
// The handler assumes that anyone may connect:
//
//   - A client has max_connections_per_ip connections at most (relay
//     networks aside), and the handler max_connections: past them, 421
//     4.7.0 at once, before go-smtp reads anything.
//   - Once a read fails (a timeout, a connection cut, data not read to its
//     end), the client's stream can no longer be told apart into
//     commands: the session answers 421 to whatever it has, closes the
//     connection, and executes nothing more, not even a command line cut
//     short by the read timeout, which go-smtp hands over as if it were
//     whole. A message whose data was cut is never delivered.
//   - AUTH is bounded in CPU: see throttle.go.
//   - A message line longer than max_line_length gets 554 5.6.0; NUL, CR,
//     LF (any control character) in the arguments of EHLO, MAIL or RCPT
//     get 501 and go nowhere (not into the Received header).
package l4submission
