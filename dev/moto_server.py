"""Local AWS for development and tests: moto server, patched where the Rust SDK needs it.

moto 5.2.5 serves SES v2 contact-list and contact timestamps as ISO-8601 strings; the AWS API (and
so the Rust SDK's deserializer) uses epoch seconds, and the SDK rejects the strings. This launcher
rewrites those timestamps and then starts the ordinary moto server with the given arguments:

    python dev/moto_server.py -H 127.0.0.1 -p 5000

Sent mail in `GET /moto-api/data.json` (`ses.Message`): moto keeps a Simple send's subject and
only its HTML part (else the text part) as `body`. The launcher also keeps, on each stored message,
`text` (the text part, if any) and `tags` (the send's `EmailTags`, `{name: value}`), which the
outbox reads (dev/local-stack/src/outbox.rs): the task id is a tag, and tests compare both parts.

Fault injection for tests (off unless set), on SES v2 SendEmail:
    LOCAL_SES_REJECT=<regex>     recipients matching it are refused with MessageRejected (permanent)
    LOCAL_SES_FAIL_FIRST=<regex> the first sends to each matching recipient fail with
                                 a 503 ServiceUnavailable (transient); later sends succeed
    LOCAL_SES_FAIL_TIMES=<n>     how many first sends fail (default 3: the worker's tries per
                                 invocation, so the recipient is left owed and sent on the retry)
"""

import datetime
import json
import os
import re
import sys

from moto import server
from moto.core.exceptions import JsonRESTError
from moto.ses import models
from moto.sesv2.models import SESV2Backend
from moto.sesv2.responses import SESV2Response

TIMESTAMP_FIELDS = ("CreatedTimestamp", "LastUpdatedTimestamp")


def as_epoch_seconds(value):
    if isinstance(value, str):
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return value


def with_epoch_timestamps(model_class):
    original = model_class.response_object

    def response_object(self):
        response = dict(original.fget(self))
        for field in TIMESTAMP_FIELDS:
            if field in response:
                response[field] = as_epoch_seconds(response[field])
        return response

    model_class.response_object = property(response_object)


with_epoch_timestamps(models.Contact)
with_epoch_timestamps(models.ContactList)


def keeping_text_and_tags():
    """Every public JSON-serialisable attribute of a stored message shows in data.json: the
    message moto stored for this send gets the text part and the tags as two more."""
    original = SESV2Response.send_email

    def send_email(self):
        answer = original(self)
        params = json.loads(self.body)
        simple = (params.get("Content") or {}).get("Simple")
        message_id = json.loads(answer).get("MessageId")
        stored = [m for m in self.sesv2_backend.core_backend.sent_messages if m.id == message_id]
        if simple is not None and stored:
            stored[-1].text = (simple.get("Body", {}).get("Text") or {}).get("Data")
            stored[-1].tags = {t["Name"]: t["Value"] for t in params.get("EmailTags") or []}
        return answer

    SESV2Response.send_email = send_email


keeping_text_and_tags()


class InjectedOutage(JsonRESTError):
    """A 503, as SES answers when it cannot take a send now: transient, unlike SendingPaused."""

    code = 503


def with_injected_send_failures(reject, fail_first, fail_times):
    original = SESV2Backend.send_email
    failures = {}

    def send_email(self, source, destinations, subject, body):
        for address in destinations.get("ToAddresses", []):
            if reject and reject.search(address):
                raise JsonRESTError("MessageRejected", f"injected rejection of {address}")
            if fail_first and fail_first.search(address) and failures.get(address, 0) < fail_times:
                failures[address] = failures.get(address, 0) + 1
                raise InjectedOutage("ServiceUnavailable", f"injected failure for {address}")
        return original(self, source, destinations, subject, body)

    SESV2Backend.send_email = send_email


def pattern(variable):
    value = os.environ.get(variable)
    return re.compile(value) if value else None


if pattern("LOCAL_SES_REJECT") or pattern("LOCAL_SES_FAIL_FIRST"):
    with_injected_send_failures(
        pattern("LOCAL_SES_REJECT"),
        pattern("LOCAL_SES_FAIL_FIRST"),
        int(os.environ.get("LOCAL_SES_FAIL_TIMES", "3")),
    )

if __name__ == "__main__":
    server.main(sys.argv[1:])
