// Package l4submission holds `layer4.handlers.smtp_submission`, a caddy-l4
// connection handler that speaks SMTP to clients and hands each message it
// receives to the `smtp` app's Deliver.
//
// It is a package of its own because it is the one part of this module
// that needs caddy-l4 and an SMTP server: the `smtp` app does not depend on
// it (it depends on the app), and a Caddy built without caddy-l4 has no
// use for it. Build it in by importing it (xcaddy:
// `--with github.com/seed7b014b84/caddy-smtp/l4submission`).
//
// # A synchronous relay
//
// The smtp app has no queue yet, so this handler does not take
// responsibility for a message the way a queueing MTA does. It reads the
// whole message, calls Deliver, and answers the final dot of DATA (or BDAT
// LAST) only when Deliver has the outcome of every recipient. The client
// keeps the message, and the duty to retry it, until it gets 250. The reply
// is therefore the outcome:
//
//   - every recipient delivered: 250;
//   - any recipient deferred (a 4xx reply, no host reachable, a timeout):
//     451, with one line per recipient not delivered, so that the client
//     tries again later;
//   - no recipient deferred, some failed for good (5xx, no such domain):
//     the first failure's code when it is one RFC 5321 lists for the end
//     of DATA (550, 552, 554; else 554) and its enhanced status code, with
//     one line per failed recipient that quotes the server's reply, and,
//     when others were delivered, a last line that says how many were; the
//     client then bounces the message to its sender, whose bounce names the
//     recipients that did not get it.
//
// SMTP has a single reply for a transaction whatever its number of
// recipients, so a transaction that was delivered to some recipients and
// deferred for others cannot be answered truthfully: 250 would lose the
// message for the deferred ones (nobody would retry it), and 451 makes the
// client send it again to everyone. The handler answers 451, since a lost
// message is worse than a second copy, and avoids the second copy: it
// remembers, for five days (a client's usual retry period), the recipients
// that a message was delivered to when it answered 451, keyed by a hash of
// the envelope sender and the message as the client sent it. When the
// client retries the same message, those recipients are counted as
// delivered without being sent to again. Clients that queue (Postfix,
// Exim, sendmail) send the same bytes on every try, so their recipients
// get one copy each; a client that rebuilds the message for each try (a
// new Date or Message-ID) makes a new message, and the recipients already
// served get another copy. The memory is per process and holds the last
// 10000 such messages: a restart of Caddy forgets it. A mixed transaction where nothing was deferred (some
// delivered, some failed) is answered with the failure, as said above,
// because a retry could not help the failed ones.
//
// Since the reply waits for the delivery, delivery_timeout (5 minutes by
// default) bounds it below the 10 minutes that RFC 5321 (4.5.3.2.6) lets a
// client wait for it; recipients still pending then are deferred.
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
// first).
package l4submission
