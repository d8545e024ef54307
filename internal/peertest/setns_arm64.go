package peertest

// sysSetns is setns(2)'s system call number on linux/arm64; the frozen
// syscall package does not define SYS_SETNS.
const sysSetns = 268
