// Package sysexits holds the exit statuses of sendmail's sysexits.h, which
// programs that call a mailer from the command line (cron, PHP's mail(),
// scripts) read to tell a message that will be retried from one that
// failed for good.
package sysexits

// The statuses this module's commands exit with.
const (
	// OK: every recipient was delivered (or the message was queued).
	OK = 0
	// Usage: the command was used wrongly (a missing or unknown flag).
	Usage = 64
	// DataErr: the input was wrong (a malformed address, an empty message).
	DataErr = 65
	// NoInput: the input could not be read.
	NoInput = 66
	// Unavailable: a recipient failed for good; the message was not
	// delivered to it and will not be.
	Unavailable = 69
	// Software: an internal error.
	Software = 70
	// IOErr: an error writing the output.
	IOErr = 74
	// TempFail: not delivered yet, but it may be later (a recipient was
	// deferred, or the mailer could not be reached): try again.
	TempFail = 75
	// NoPerm: the mailer refused the caller (the admin endpoint's
	// access rules).
	NoPerm = 77
	// Config: the configuration could not be loaded.
	Config = 78
)
