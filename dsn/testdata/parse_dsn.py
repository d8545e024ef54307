#!/usr/bin/env python3
"""Parses a delivery status notification with Python's email package and
prints what it found as JSON, for dsn's tests (which compare it with what
the notice should say). Reads the notice from the file named on the command
line."""

import base64
import email
import email.parser
import email.policy
import json
import sys

# Serializes a returned message as it was parsed: no refolding, CRLF.
RAW = email.policy.default.clone(linesep="\r\n", refold_source="none", max_line_length=0)


def fields(msg):
    return [[k, str(v)] for k, v in msg.items()]


def blocks_of_text(text):
    """Parses the groups of fields of a global delivery status (which
    Python reads as a message: its first group is the header, the rest the
    body) with the email package's header parser."""
    parser = email.parser.HeaderParser(policy=email.policy.default)
    out = []
    for chunk in text.replace("\r\n", "\n").split("\n\n"):
        if chunk.strip():
            out.append(fields(parser.parsestr(chunk + "\n\n")))
    return out


def main():
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    msg = email.message_from_bytes(data, policy=email.policy.default)
    result = {
        "defects": [type(d).__name__ for d in msg.defects],
        "header": fields(msg),
        "type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "parts": [],
        "from": [[a.display_name, a.addr_spec] for a in msg["From"].addresses],
        "to": [[a.display_name, a.addr_spec] for a in msg["To"].addresses],
    }
    for part in msg.iter_parts():
        ctype = part.get_content_type()
        p = {
            "type": ctype,
            "charset": part.get_param("charset"),
            "cte": part.get("Content-Transfer-Encoding", "7bit").lower(),
            "defects": [type(d).__name__ for d in part.defects],
        }
        if ctype == "message/delivery-status":
            p["blocks"] = [fields(b) for b in part.get_payload()]
        elif ctype == "message/global-delivery-status":
            inner = part.get_payload()[0]
            head = fields(inner)
            body = inner.get_payload(decode=True) or b""
            p["blocks"] = [head] + blocks_of_text(body.decode("utf-8"))
        elif ctype in ("message/rfc822", "message/global", "message/global-headers"):
            inner = part.get_payload()[0]
            p["body"] = base64.b64encode(inner.as_bytes(policy=RAW)).decode()
            p["inner_header"] = fields(inner)
        elif ctype.startswith("text/"):
            p["body"] = base64.b64encode(part.get_payload(decode=True)).decode()
            p["text"] = part.get_content()
        result["parts"].append(p)
    json.dump(result, sys.stdout, ensure_ascii=False, indent=1)


main()
