"""Schemathesis hooks for tests/e2e/contract.rs (loaded through SCHEMATHESIS_HOOKS)."""

import schemathesis


@schemathesis.hook
def filter_body(ctx, body):
    """Keeps bodies that are not raw bytes, or are UTF-8.

    `cargo lambda watch` answers a request whose body is not UTF-8 with a 500 of its own, without
    invoking the function (API Gateway would base64-encode it), so such a body would test the
    emulator, not the function. The function's answer to it, a 400 malformed-json, is checked in
    process by functions/accept's `empty_and_non_utf8_bodies_are_400`.
    """
    if not isinstance(body, (bytes, bytearray)):
        return True
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
