#!/usr/bin/env python3
"""Parses a delivery status notification with Python's email package (the
parser mail clients' authors test against) and prints what it found as
JSON, for the end-to-end tests in dsn_test.go. Reads the notice from the
file named on the command line."""

import email
import email.policy
import json
import sys


def fields(msg):
    return [[k, str(v)] for k, v in msg.items()]


def main():
    with open(sys.argv[1], "rb") as f:
        msg = email.message_from_bytes(f.read(), policy=email.policy.default)
    result = {
        "defects": [type(d).__name__ for d in msg.defects],
        "type": msg.get_content_type(),
        "report_type": msg.get_param("report-type"),
        "header": fields(msg),
        "parts": [],
    }
    if msg.is_multipart():
        for part in msg.iter_parts():
            ctype = part.get_content_type()
            p = {"type": ctype, "defects": [type(d).__name__ for d in part.defects]}
            if ctype == "message/delivery-status":
                # The email package reads each group of fields as a
                # message of its own.
                p["blocks"] = [fields(b) for b in part.get_payload()]
            elif ctype == "message/rfc822":
                p["inner_header"] = fields(part.get_payload()[0])
            elif ctype.startswith("text/"):
                p["text"] = part.get_content()
            result["parts"].append(p)
    json.dump(result, sys.stdout, indent=1)


main()
