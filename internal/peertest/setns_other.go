//go:build !amd64 && !arm64

package peertest

// sysSetns is unknown on this architecture: DialNetns reports an error.
var sysSetns = -1
