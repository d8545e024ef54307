// Package strategy builds the connection plan of a delivery attempt: which
// hosts, which of their addresses in which order, from which source address
// and under which EHLO name, following the app's ip_strategy, limits and
// source_ip settings.
package strategy
