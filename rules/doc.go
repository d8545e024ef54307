// Package rules holds the settings of the smtp app that are either a plain
// value or a list of if/then/else rules, and the CEL environment in which the
// rules' conditions are written.
//
// It is a package of its own because every part of the delivery engine
// (routing, the connection plan, the transport and the TLS policy) evaluates
// settings with the same variables, and none of those parts should depend on
// another to do it.
//
// A rule list reads as in Stalwart's configuration:
//
//	"ip_strategy": [
//		{"if": "retry_num == 0", "then": "ipv6_only"},
//		{"else": "ipv4_only"}
//	]
//
// Conditions are CEL expressions (https://cel.dev) over the variables that
// [Vars] documents, plus `lists`, the app's named lists, so that
// `rcpt_domain in lists.domains` works. They are compiled and type-checked
// once, when the configuration loads; a setting that is a plain value costs
// nothing to evaluate. A condition is also held to a cost (see [MaxCost]):
// one that may cost more in the worst case is refused when the
// configuration loads, and one whose cost grows with its input is stopped
// as it runs when it goes past it. A condition naming a list that does not
// exist is refused when the configuration loads.
package rules
