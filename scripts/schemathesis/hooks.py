"""schemathesis hooks for scripts/api-fuzz.

Webhook deliveries are authenticated by an HMAC-SHA256 signature over the
exact body bytes, which schemathesis cannot compute from the OpenAPI
description. A generated signature that is well-formed (`sha256=` and 64 hex
digits, what the description asks for) is replaced here, on the wire, by the
right one, so that berth parses the generated payloads instead of refusing
them all with 401. Malformed signatures (negative cases) are left alone and
still meet berth's 401.
"""

import hashlib
import hmac
import os
import re

import requests

SECRET = os.environ["BERTH_FUZZ_WEBHOOK_SECRET"].encode()
WELL_FORMED = re.compile(r"sha256=[0-9a-f]{64}")
_send = requests.Session.send


def _signed_send(self, request, **kwargs):
    signature = request.headers.get("X-Hub-Signature-256")
    if (
        request.path_url.startswith("/v1/webhooks/github")
        and signature is not None
        and WELL_FORMED.fullmatch(signature)
    ):
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        request.headers["X-Hub-Signature-256"] = (
            "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        )
    return _send(self, request, **kwargs)


requests.Session.send = _signed_send


# `POST /v1/hook/build` takes a tar archive (`application/x-tar`), a media
# type schemathesis has no serializer for: the generated binary string is
# sent as it is (berth answers 401 without a hook credential, or reads it
# as an archive).
import schemathesis


@schemathesis.serializer("application/x-tar")
def _tar(ctx, value):
    if isinstance(value, bytes):
        return value
    if hasattr(value, "data"):
        return bytes(value.data)
    return str(value).encode()
