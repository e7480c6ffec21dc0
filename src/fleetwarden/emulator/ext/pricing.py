"""The AWS Price List API's GetProducts, which moto lacks, in AWS's documented request and response shapes.

`GetProducts` (awsJson1.1, `X-Amz-Target: AWSPriceListService.GetProducts`, signing name `pricing`; AWS answers
it in us-east-1) answers from seeded products:

- request `{"ServiceCode", "Filters": [{"Type": "TERM_MATCH", "Field", "Value"}], "FormatVersion", "NextToken",
  "MaxResults"}`; every filter must match one of the product's attributes (`product.attributes`, plus
  `productFamily`, `sku` and `servicecode`); field names match whatever their case, values exactly. `EQUALS` is
  taken as `TERM_MATCH`; other filter types are refused.
- response `{"FormatVersion": "aws_v1", "PriceList": [JSON string, ...], "NextToken"}`: each item is a JSON
  *string* of AWS's product shape (`product`, `serviceCode`, `terms.OnDemand...priceDimensions...pricePerUnit`,
  `version`, `publicationDate`), ordered by SKU; `MaxResults` 1-100 (default 100); `NextToken` an opaque token
  valid for the same query only.
- errors as AWS's (HTTP 400, `{"__type", "message"}`): an unknown `ServiceCode` or `FormatVersion`, a bad filter
  or `MaxResults` -> `InvalidParameterException`; a token of another query or garbage -> `InvalidNextTokenException`.

It starts with a small default catalogue (`DEFAULT_PRODUCTS`: a handful of types in us-east-1, eu-west-1 and
eu-central-1 at plausible 2025 Linux on-demand prices, plus a Windows and a reservation product the usual
filters leave out), so a demo has data; `/moto-api/reset` brings it back.

Admin endpoints under `/_fleetwarden/pricing/`:

- `POST products` `{"products": [...], "replace": false}`: add products (`replace: true` drops the catalogue
  first, defaults included). Each is an item of AWS's shape (an object, or its JSON string), or a shorthand
  `{"region": "eu-west-1", "instance_type": "m5.large", "usd": 0.107, "attributes": {...}}` that builds one
  (Linux, shared tenancy, `Used`, no license unless `attributes` says otherwise).
- `GET products`: how many products per region code.
- `POST faults` `{"rules": [{"region_code": "eu-west-3", "code": "ThrottlingException", "status": 400,
  "message": "Rate exceeded", "limit": null}]}`: fail GetProducts queries whose `regionCode` filter names that
  region (all of them without `region_code`). The emulator's general fault rules match the signing region, and
  every Price List call is signed for us-east-1, so per-region failures need this. An empty list clears them.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable
from typing import Any

from . import (
    BadToken,
    Extension,
    Request,
    StartResponse,
    json_error,
    json_response,
    page_token,
    query_digest,
    token_offset,
)

_TARGET = "GetProducts"
MAX_RESULTS = 100
FORMAT_VERSION = "aws_v1"
KNOWN_SERVICES = frozenset({"AmazonEC2", "AmazonRDS", "AmazonS3", "AWSLambda", "AmazonDynamoDB"})
_PUBLICATION = "2025-06-01T00:00:00Z"
_TERM_CODE = "JRTCKXETXF"  # AWS's term code of on-demand offers
_RATE_CODE = "6YS6EN2CT7"  # AWS's rate code of the hourly dimension

_LINUX = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}
# (region, type, USD per hour): 2025 Linux on-demand list prices, rounded as AWS publishes them.
DEFAULT_PRICES: tuple[tuple[str, str, float], ...] = (
    ("us-east-1", "t3.micro", 0.0104),
    ("us-east-1", "t3.large", 0.0832),
    ("us-east-1", "m5.large", 0.096),
    ("us-east-1", "m7i.large", 0.1008),
    ("us-east-1", "c7i.large", 0.08925),
    ("us-east-1", "r7i.large", 0.1323),
    ("us-east-1", "g5.xlarge", 1.006),
    ("us-east-1", "p5.48xlarge", 55.04),
    ("eu-west-1", "t3.micro", 0.0114),
    ("eu-west-1", "t3.large", 0.0912),
    ("eu-west-1", "m5.large", 0.107),
    ("eu-west-1", "m7i.large", 0.1124),
    ("eu-west-1", "c7i.large", 0.1008),
    ("eu-west-1", "r7i.large", 0.1478),
    ("eu-central-1", "t3.micro", 0.012),
    ("eu-central-1", "t3.large", 0.096),
    ("eu-central-1", "m5.large", 0.115),
    ("eu-central-1", "m7i.large", 0.1210),
    ("eu-central-1", "c7i.large", 0.1029),
)


class _Invalid(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdminBadRequest(ValueError):
    """A bad admin body (HTTP 400)."""


def product_item(
    region: str, instance_type: str, usd: float | str, attributes: dict[str, str] | None = None, *, unit: str = "Hrs"
) -> dict[str, Any]:
    """One EC2 product of AWS's GetProducts shape (as an object; the API sends it as a JSON string)."""
    attrs = {
        "servicecode": "AmazonEC2",
        "servicename": "Amazon Elastic Compute Cloud",
        "instanceType": instance_type,
        "instanceFamily": "General purpose",
        "regionCode": region,
        "location": region,
        "locationType": "AWS Region",
        "usagetype": f"{region}-BoxUsage:{instance_type}",
        "operation": "RunInstances",
        "marketoption": "OnDemand",
        **_LINUX,
        **(attributes or {}),
    }
    seed = json.dumps([region, instance_type, sorted(attrs.items())], sort_keys=True)
    sku = hashlib.sha256(seed.encode()).hexdigest()[:16].upper()
    offer = f"{sku}.{_TERM_CODE}"
    price = usd if isinstance(usd, str) else f"{usd:.10f}"
    return {
        "product": {"productFamily": "Compute Instance", "attributes": attrs, "sku": sku},
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                offer: {
                    "priceDimensions": {
                        f"{offer}.{_RATE_CODE}": {
                            "unit": unit,
                            "endRange": "Inf",
                            "description": f"${float(price):g} per On Demand {attrs['operatingSystem']} "
                            f"{instance_type} Instance Hour",
                            "appliesTo": [],
                            "rateCode": f"{offer}.{_RATE_CODE}",
                            "beginRange": "0",
                            "pricePerUnit": {"USD": price},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": "2025-06-01T00:00:00Z",
                    "offerTermCode": _TERM_CODE,
                    "termAttributes": {},
                }
            }
        },
        "version": "20250601000000",
        "publicationDate": _PUBLICATION,
    }


def default_products() -> list[dict[str, Any]]:
    """The catalogue the emulator starts with (and returns to on reset)."""
    products = [product_item(region, itype, usd) for region, itype, usd in DEFAULT_PRICES]
    # What the usual filters must leave out: Windows, and a capacity reservation's price of the same type.
    products.append(product_item("us-east-1", "m5.large", 0.188, {"operatingSystem": "Windows"}))
    products.append(product_item("us-east-1", "m5.large", 0.096, {"capacitystatus": "UnusedCapacityReservation"}))
    return products


class PricingExtension(Extension):
    """GetProducts over a seeded catalogue, with AWS's filters, paging and errors."""

    name = "pricing"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._products: dict[str, dict[str, Any]] = {}
        self._faults: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._products = {}
            self._faults = []
            for product in default_products():
                self._products[str(product["product"]["sku"])] = product

    # -- AWS requests --------------------------------------------------------------------------------------
    def handle(self, request: Request, start_response: StartResponse) -> Iterable[bytes] | None:
        if request.service != "pricing" or request.action != _TARGET:
            return None
        try:
            body = request.json()
            if not isinstance(body, dict):
                raise _Invalid("InvalidParameterException", "the request body must be a JSON object")
            fault = self._fault(body)
            if fault is not None:
                status = int(fault.get("status", 400))
                code = str(fault.get("code", "ThrottlingException"))
                return json_error(start_response, status, code, str(fault.get("message", "Rate exceeded")))
            payload = self._get_products(body)
        except json.JSONDecodeError as exc:
            return json_error(start_response, 400, "InvalidParameterException", f"the request is not JSON: {exc}")
        except _Invalid as exc:
            return json_error(start_response, 400, exc.code, str(exc))
        return json_response(start_response, payload)

    def _fault(self, body: dict[str, Any]) -> dict[str, Any] | None:
        codes = {
            str(f.get("Value"))
            for f in body.get("Filters") or []
            if isinstance(f, dict) and str(f.get("Field", "")).lower() == "regioncode"
        }
        with self._lock:
            for rule in self._faults:
                wanted = rule.get("region_code")
                if wanted is not None and wanted not in codes:
                    continue
                limit = rule.get("limit")
                if limit is not None and rule.get("hits", 0) >= limit:
                    continue
                rule["hits"] = rule.get("hits", 0) + 1
                return dict(rule)
        return None

    def _get_products(self, body: dict[str, Any]) -> dict[str, Any]:
        service = body.get("ServiceCode")
        if not isinstance(service, str) or not service:
            raise _Invalid("InvalidParameterException", "ServiceCode is required")
        with self._lock:
            products = list(self._products.values())
        known = KNOWN_SERVICES | {str(p.get("serviceCode")) for p in products}
        if service not in known:
            raise _Invalid("InvalidParameterException", f"Input parameters are invalid. Unknown service: {service}")
        version = body.get("FormatVersion", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise _Invalid("InvalidParameterException", f"Unsupported FormatVersion: {version!r} (aws_v1 only)")
        wanted = _filters(body.get("Filters"))
        limit = body.get("MaxResults", MAX_RESULTS)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_RESULTS:
            raise _Invalid("InvalidParameterException", f"MaxResults must be between 1 and {MAX_RESULTS}")
        asked = [service, sorted(wanted), version, limit]
        query = query_digest(asked)
        offset = _offset(body.get("NextToken"), query)
        matching = sorted(
            (p for p in products if p.get("serviceCode") == service and _matches(p, wanted)),
            key=lambda p: str(p["product"]["sku"]),
        )
        page = matching[offset : offset + limit]
        result: dict[str, Any] = {"FormatVersion": FORMAT_VERSION, "PriceList": [json.dumps(p) for p in page]}
        if offset + limit < len(matching):
            result["NextToken"] = page_token(query, offset + limit)
        return result

    # -- admin ---------------------------------------------------------------------------------------------
    def admin(self, path: str, method: str, body: Any) -> dict[str, Any] | None:
        from ..middleware import AdminError

        try:
            if path == "products" and method == "POST":
                return self._seed(body)
            if path == "faults" and method == "POST":
                return self._set_faults(body)
        except AdminBadRequest as exc:
            raise AdminError(f"pricing/{path}: {exc}") from None
        if path == "products" and method == "GET":
            with self._lock:
                counts: dict[str, int] = {}
                for p in self._products.values():
                    code = str(p["product"].get("attributes", {}).get("regionCode", "?"))
                    counts[code] = counts.get(code, 0) + 1
            return {"total": sum(counts.values()), "by_region": dict(sorted(counts.items()))}
        if path == "faults" and method == "GET":
            with self._lock:
                return {"rules": [dict(r) for r in self._faults]}
        return None

    def _seed(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("products"), list):
            raise AdminBadRequest('POST {"products": [...], "replace": false}')
        products = [_product(raw) for raw in body["products"]]
        with self._lock:
            if body.get("replace"):
                self._products = {}
            for product in products:
                self._products[str(product["product"]["sku"])] = product
            total = len(self._products)
        return {"added": len(products), "total": total}

    def _set_faults(self, body: Any) -> dict[str, Any]:
        rules = body.get("rules", []) if isinstance(body, dict) else body
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            raise AdminBadRequest('POST {"rules": [{"region_code", "code", "status", "message", "limit"}]}')
        with self._lock:
            self._faults = [{**r, "hits": 0} for r in rules]
            return {"rules": [dict(r) for r in self._faults]}


def _filters(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _Invalid("InvalidParameterException", "Filters must be a list")
    out: list[tuple[str, str]] = []
    for item in raw:
        if not isinstance(item, dict):
            raise _Invalid("InvalidParameterException", "each filter must be an object")
        kind, name, value = item.get("Type"), item.get("Field"), item.get("Value")
        if kind not in ("TERM_MATCH", "EQUALS"):
            raise _Invalid("InvalidParameterException", f"Filter Type {kind!r} is not supported by the emulator")
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise _Invalid("InvalidParameterException", "a filter needs a Field and a Value")
        out.append((name.lower(), value))
    return out


def _matches(product: dict[str, Any], wanted: list[tuple[str, str]]) -> bool:
    inner = product.get("product") or {}
    attributes = {str(k).lower(): str(v) for k, v in (inner.get("attributes") or {}).items()}
    attributes.setdefault("productfamily", str(inner.get("productFamily", "")))
    attributes.setdefault("sku", str(inner.get("sku", "")))
    attributes.setdefault("servicecode", str(product.get("serviceCode", "")))
    return all(attributes.get(name) == value for name, value in wanted)


def _offset(token: Any, query: str) -> int:
    try:
        return token_offset(token, query)
    except BadToken:
        raise _Invalid("InvalidNextTokenException", "The nextToken provided is invalid") from None


def _product(raw: Any) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            raise AdminBadRequest("a product string must be JSON") from None
    if not isinstance(raw, dict):
        raise AdminBadRequest("each product must be an object (AWS's shape or the shorthand)")
    if "product" in raw:
        inner = raw["product"]
        if not isinstance(inner, dict) or not isinstance(inner.get("attributes"), dict):
            raise AdminBadRequest("product.attributes must be an object")
        product = dict(raw)
        product.setdefault("serviceCode", "AmazonEC2")
        if not inner.get("sku"):
            digest = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()
            product["product"] = {**inner, "sku": digest[:16].upper()}
        return product
    region, itype, usd = raw.get("region"), raw.get("instance_type"), raw.get("usd")
    if not isinstance(region, str) or not isinstance(itype, str) or not region or not itype:
        raise AdminBadRequest("a shorthand product needs region and instance_type")
    if isinstance(usd, bool) or not isinstance(usd, int | float | str):
        raise AdminBadRequest("usd must be a number (or AWS's decimal string)")
    attributes = raw.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise AdminBadRequest("attributes must be an object")
    return product_item(region, itype, usd if isinstance(usd, str) else float(usd), attributes)
