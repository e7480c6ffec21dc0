"""EC2 DescribeInstances in a region moto has never been asked about: an empty answer, in EC2's shape, without
building moto's EC2 backend for it.

A fresh moto EC2 backend costs about 0.3 s of CPU and a few MB (default VPCs, AMIs, instance types), and a guard trip
sweeps every enabled region of the account (docs/guard.md): on the emulator that would build ~25 backends per
tripped account per test. What such a backend would answer is known: no instances. Only a DescribeInstances without
instance ids is answered here (with ids, EC2 answers InvalidInstanceID.NotFound, which moto does); every other
call, and every region that has a backend, goes to moto as before.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterable

from . import Extension, Request, StartResponse

_EMPTY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    "<requestId>{request_id}</requestId><reservationSet/></DescribeInstancesResponse>"
)


class Ec2Untouched(Extension):
    """Empty DescribeInstances for (account, region) pairs moto holds nothing for."""

    name = "ec2_untouched"

    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "ec2" or request.action != "DescribeInstances":
            return None
        from moto.ec2.models import ec2_backends

        account = dict.get(ec2_backends, request.account_id)
        if account is not None and dict.get(account, request.region) is not None:
            return None
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        if any(key.startswith("InstanceId.") for key in form):
            return None
        body = _EMPTY.format(request_id=uuid.uuid4()).encode()
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]
