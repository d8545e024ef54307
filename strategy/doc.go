// Package strategy builds the connection plan of a delivery attempt: which
// hosts, which of their addresses in which order, from which source address
// and under which EHLO name, following the app's ip_strategy, limits and
// source_ip settings; and dials it, with happy eyeballs.
//
// The Dialer remembers the addresses that timed out (a connect timeout
// that expired, or an attempt still pending after the fallback delay when
// another address connected) in a Memory shared by the whole process,
// across config reloads: for five minutes, at most 4096 addresses. Later
// connections to a host try its remembered addresses after the others, so
// that an address that drops every packet (an IPv4 or IPv6 route that is
// black-holed) costs the fallback delay once, not on every connection. The
// plan itself keeps the configured order; only the dial order changes.
package strategy
