"""Local AWS for development and tests: moto server, patched where the Rust SDK needs it.

moto 5.2.5 serves SES v2 contact-list and contact timestamps as ISO-8601 strings; the AWS API (and
so the Rust SDK's deserializer) uses epoch seconds, and the SDK rejects the strings. This launcher
rewrites those timestamps and then starts the ordinary moto server with the given arguments:

    python dev/moto_server.py -H 127.0.0.1 -p 5000
"""

import datetime
import sys

from moto import server
from moto.ses import models

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

if __name__ == "__main__":
    server.main(sys.argv[1:])
