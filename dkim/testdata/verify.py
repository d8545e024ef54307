#!/usr/bin/python3
"""Verify every DKIM signature of a message with python3-dkim.

usage: verify.py MESSAGE_FILE RESOLVER_HOST RESOLVER_PORT

Keys are looked up with dnspython at the given resolver (the test's
unbound), not at the machine's. Prints one JSON object per signature:
{"d", "s", "a", "h", "ok", "error", "key"}. When python3-dkim says no
without raising (a key record missing or unreadable, a bad signature),
"error" holds what it logged, and "key" is the record it was given.
"""
import json
import logging
import sys

import dkim
import dns.resolver


class Collect(logging.Handler):
    """Keeps the messages python3-dkim logs at ERROR."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.msgs = []

    def emit(self, record):
        self.msgs.append(record.getMessage())


def main():
    path, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    logs = Collect()
    logger = logging.getLogger("verify.py")
    logger.propagate = False
    logger.addHandler(logs)
    looked = {}
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        try:
            ans = res.resolve(name, "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as e:
            looked[name] = ("(%s)" % type(e).__name__).encode()
            return None
        for rr in ans:
            looked[name] = b"".join(rr.strings)
            return looked[name]
        return None

    with open(path, "rb") as f:
        msg = f.read()
    d = dkim.DKIM(msg, logger=logger)
    sigs = [v for (k, v) in d.headers if k.lower() == b"dkim-signature"]
    for i, v in enumerate(sigs):
        tags = dkim.util.parse_tag_value(v)
        out = {
            "d": tags.get(b"d", b"").decode(),
            "s": tags.get(b"s", b"").decode(),
            "a": tags.get(b"a", b"").decode(),
            "h": b"".join(tags.get(b"h", b"").split()).decode(),
        }
        logs.msgs.clear()
        looked.clear()
        try:
            out["ok"] = bool(d.verify(idx=i, dnsfunc=dnsfunc))
            out["error"] = "" if out["ok"] else "; ".join(logs.msgs) or "signature does not verify"
        except Exception as e:  # dkim.DKIMException and lookup errors
            out["ok"] = False
            out["error"] = "%s: %s" % (type(e).__name__, e)
        out["key"] = b" | ".join(looked.values()).decode(errors="replace")
        print(json.dumps(out))
    sys.stdout.flush()


main()
