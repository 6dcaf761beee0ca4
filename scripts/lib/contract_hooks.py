"""Schemathesis extensions for scripts/api-contract.sh: request bodies in NDJSON
(`POST /api/v1/documents:batch`), which schemathesis cannot serialise by itself.
A generated string goes as it is; any other value as one JSON document per line."""
import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf-8")}
    items = value if isinstance(value, list) else [value]
    return {"data": "".join(json.dumps(v) + "\n" for v in items).encode("utf-8")}
