"""JMAP Request -> Response (RFC 8620 §3) for the methods ``jmap`` serves.

This is what ``smime-milter jmap`` speaks on stdin/stdout and over HTTP, so a
JMAP server in any language can use the store: Email/get, Email/query and
Email/changes restricted to the RFC 9219 properties, with record ids as
email ids, plus Core/echo. Arguments are checked as RFC 8620 requires;
problems become method-level errors (``unknownMethod``,
``invalidArguments``, ``unsupportedFilter``, ``cannotCalculateChanges``...)
or, for a malformed request as a whole, a :class:`RequestError` carrying an
RFC 7807 problem object.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from smime_milter.errors import SmimeMilterError
from smime_milter.jmap.methods import (
    RECORD_PROPERTIES,
    SMIME_PROPERTIES,
    SMIMEVERIFY,
    FilterError,
    SmimeJmap,
)
from smime_milter.store import CannotCalculateChanges, StoreError

log = logging.getLogger(__name__)

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
KNOWN_CAPABILITIES = frozenset({CORE, MAIL, SMIMEVERIFY})
#: Limits, as a Session's core capability would announce them.
MAX_CALLS_IN_REQUEST = 64
MAX_OBJECTS_IN_GET = 100_000
MAX_CANDIDATES = 10_000_000
_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ERROR_URN = "urn:ietf:params:jmap:error:"


class RequestError(SmimeMilterError):
    """A request-level error (RFC 8620 §3.6.1): the whole request is refused."""

    def __init__(self, kind: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.problem = {"type": _ERROR_URN + kind, "status": status, "detail": detail}
        self.status = status


class MethodError(SmimeMilterError):
    """A method-level error (RFC 8620 §3.6.2)."""

    def __init__(self, error_type: str, description: str) -> None:
        super().__init__(description)
        self.type = error_type
        self.description = description


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    arguments: dict[str, Any]
    call_id: str


# A method: (arguments, capabilities in use) -> the response arguments.
_Method = Callable[[dict[str, Any], set[str]], dict[str, Any]]


class JmapProtocol:
    """Processes JMAP Request objects against one :class:`SmimeJmap`."""

    def __init__(self, api: SmimeJmap) -> None:
        self.api = api
        self._methods: dict[str, tuple[str, _Method]] = {
            "Core/echo": (CORE, lambda args, using: args),
            "Email/get": (MAIL, self._email_get),
            "Email/query": (MAIL, self._email_query),
            "Email/changes": (MAIL, self._email_changes),
        }

    def handle(self, request: Any) -> dict[str, Any]:
        """The Response object for ``request`` (already parsed JSON)."""
        using, calls = _parse_request(request)
        responses: list[list[Any]] = []
        for call in calls:
            name, arguments = call.name, call.arguments
            try:
                arguments = _resolve_references(arguments, responses)
                required, method = self._methods.get(name, (None, None))
                if method is None or required not in using:
                    raise MethodError("unknownMethod", f"no method {name!r} with this 'using'")
                responses.append([name, method(arguments, using), call.call_id])
            except MethodError as exc:
                responses.append(["error", {"type": exc.type, "description": exc.description},
                                  call.call_id])
            except StoreError as exc:
                log.error("%s failed: %s", name, exc)
                responses.append(["error", {"type": "serverFail", "description": str(exc)},
                                  call.call_id])
        return {"methodResponses": responses, "sessionState": "0"}

    # ----------------------------------------------------------------- methods

    def _email_get(self, args: dict[str, Any], using: set[str]) -> dict[str, Any]:
        _allow(args, {"accountId", "ids", "properties"})
        account = _account(args)
        ids = args.get("ids")
        if ids is None:
            ids = list(self.api.store.record_ids())
            if len(ids) > MAX_OBJECTS_IN_GET:
                raise MethodError("requestTooLarge",
                                  f"more than {MAX_OBJECTS_IN_GET} emails; ask for ids")
        else:
            ids = _ids(args, "ids", MAX_OBJECTS_IN_GET)
        properties = args.get("properties")
        if properties is not None:
            properties = _strings(args, "properties")
            allowed = (*RECORD_PROPERTIES, *SMIME_PROPERTIES)
            unknown = [name for name in properties if name not in allowed]
            if unknown:
                raise MethodError("invalidArguments", f"properties not served here: "
                                  f"{', '.join(unknown)} (only {', '.join(allowed)})")
        _need_smime(using, properties if properties is not None else SMIME_PROPERTIES)
        result = self.api.email_get(ids, properties)
        return {"accountId": account, "state": result.state, "list": list(result.found),
                "notFound": list(result.not_found)}

    def _email_query(self, args: dict[str, Any], using: set[str]) -> dict[str, Any]:
        _allow(args, {"accountId", "filter", "sort", "position", "anchor", "anchorOffset",
                      "limit", "calculateTotal", "collapseThreads", "candidateIds"})
        account = _account(args)
        filter = args.get("filter")
        if filter is not None and not isinstance(filter, dict):
            raise MethodError("invalidArguments", "filter must be an object or null")
        if filter and SMIMEVERIFY not in using:
            raise MethodError("unsupportedFilter", f"the S/MIME filters need {SMIMEVERIFY} "
                              "in 'using'")
        if args.get("sort") not in (None, []):
            raise MethodError("unsupportedSort", "this backend returns candidate order; "
                              "sort in the JMAP server")
        collapse = args.get("collapseThreads", False)
        calculate_total = args.get("calculateTotal", False)
        if not isinstance(collapse, bool) or not isinstance(calculate_total, bool):
            raise MethodError("invalidArguments", "collapseThreads and calculateTotal are "
                              "booleans")
        candidates = None
        if args.get("candidateIds") is not None:
            candidates = _ids(args, "candidateIds", MAX_CANDIDATES)
        state = self.api.state()
        try:
            ids = self.api.email_query(filter, candidates)
        except FilterError as exc:
            raise MethodError(exc.type, str(exc)) from None
        position, page = _window(args, ids)
        response: dict[str, Any] = {
            "accountId": account, "queryState": state, "canCalculateChanges": False,
            "position": position, "ids": page,
        }
        if calculate_total:
            response["total"] = len(ids)
        return response

    def _email_changes(self, args: dict[str, Any], using: set[str]) -> dict[str, Any]:
        _allow(args, {"accountId", "sinceState", "maxChanges"})
        account = _account(args)
        since = args.get("sinceState")
        if not isinstance(since, str):
            raise MethodError("invalidArguments", "sinceState must be a string")
        max_changes = args.get("maxChanges")
        if max_changes is not None and (
            isinstance(max_changes, bool) or not isinstance(max_changes, int) or max_changes < 1
        ):
            raise MethodError("invalidArguments", "maxChanges must be a positive integer")
        try:
            changes = self.api.email_changes(since, max_changes)
        except CannotCalculateChanges as exc:
            raise MethodError("cannotCalculateChanges", str(exc)) from None
        return {
            "accountId": account, "oldState": changes.old_state, "newState": changes.new_state,
            "hasMoreChanges": changes.has_more_changes, "created": list(changes.created),
            "updated": list(changes.updated), "destroyed": list(changes.destroyed),
        }


# --------------------------------------------------------------------------- request


def _parse_request(request: Any) -> tuple[set[str], list[_Call]]:
    if not isinstance(request, dict) or not isinstance(request.get("using"), list) \
            or not isinstance(request.get("methodCalls"), list):
        raise RequestError("notRequest", "expected a JMAP Request object with 'using' and "
                           "'methodCalls' arrays")
    using = request["using"]
    if not all(isinstance(item, str) for item in using):
        raise RequestError("notRequest", "'using' must hold capability strings")
    unknown = sorted(set(using) - KNOWN_CAPABILITIES)
    if unknown:
        raise RequestError("unknownCapability", f"unknown capabilities: {', '.join(unknown)}")
    if len(request["methodCalls"]) > MAX_CALLS_IN_REQUEST:
        raise RequestError("limit", f"more than {MAX_CALLS_IN_REQUEST} method calls")
    calls = []
    for call in request["methodCalls"]:
        if not (isinstance(call, list) and len(call) == 3 and isinstance(call[0], str)
                and isinstance(call[1], dict) and isinstance(call[2], str)):
            raise RequestError("notRequest", "each method call is [name, arguments, callId]")
        calls.append(_Call(call[0], call[1], call[2]))
    return set(using), calls


def _resolve_references(args: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    """RFC 8620 §3.7 back-references: ``"#ids": {"resultOf", "name", "path"}``."""
    resolved = {}
    for key, value in args.items():
        if not key.startswith("#"):
            resolved[key] = value
            continue
        if key[1:] in args:
            raise MethodError("invalidArguments", f"both {key[1:]!r} and {key!r} given")
        if not isinstance(value, dict) or set(value) != {"resultOf", "name", "path"}:
            raise MethodError("invalidResultReference", f"{key} is not a ResultReference")
        source = next((r for r in responses if r[2] == value["resultOf"]), None)
        if source is None or source[0] != value["name"]:
            raise MethodError("invalidResultReference",
                              f"no {value['name']} response with id {value['resultOf']!r}")
        try:
            resolved[key[1:]] = _pointer(source[1], value["path"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MethodError("invalidResultReference", f"path {value['path']!r}: {exc}") from None
    return resolved


def _pointer(document: Any, path: str) -> Any:
    """JSON Pointer with the JMAP ``*`` extension (RFC 8620 §3.7)."""
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise ValueError("not a JSON pointer")
    if not path:
        return document
    head, _, rest = path[1:].partition("/")
    token = head.replace("~1", "/").replace("~0", "~")
    rest = "/" + rest if _ else ""
    if isinstance(document, list):
        if token == "*":
            values = [_pointer(item, rest) for item in document]
            flat: list[Any] = []
            for value in values:
                flat.extend(value if isinstance(value, list) else [value])
            return flat
        return _pointer(document[int(token)], rest)
    if isinstance(document, Mapping):
        return _pointer(document[token], rest)
    raise TypeError(f"cannot descend into {type(document).__name__}")


# --------------------------------------------------------------------------- arguments


def _allow(args: Mapping[str, Any], names: set[str]) -> None:
    unknown = sorted(set(args) - names)
    if unknown:
        raise MethodError("invalidArguments", f"unknown arguments: {', '.join(unknown)}")


def _account(args: Mapping[str, Any]) -> str:
    """The accountId, echoed: the store serves every account whose mail
    passed the milter, and record ids are unique across them."""
    account = args.get("accountId")
    if not isinstance(account, str) or not _ID.fullmatch(account):
        raise MethodError("invalidArguments", "accountId must be a JMAP Id")
    return account


def _strings(args: Mapping[str, Any], key: str) -> list[str]:
    value = args.get(key)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MethodError("invalidArguments", f"{key} must be an array of strings")
    return value


def _ids(args: Mapping[str, Any], key: str, limit: int) -> list[str]:
    ids = _strings(args, key)
    if len(ids) > limit:
        raise MethodError("requestTooLarge", f"{key} holds more than {limit} ids")
    return ids


def _need_smime(using: set[str], what: Any) -> None:
    if SMIMEVERIFY not in using and what:
        raise MethodError("invalidArguments", f"{SMIMEVERIFY} is not in 'using'")


def _window(args: Mapping[str, Any], ids: list[str]) -> tuple[int, list[str]]:
    """RFC 8620 §5.5 position/anchor/anchorOffset/limit."""
    for key in ("position", "anchorOffset", "limit"):
        value = args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise MethodError("invalidArguments", f"{key} must be an integer")
    limit = args.get("limit")
    if limit is not None and limit < 0:
        raise MethodError("invalidArguments", "limit must not be negative")
    anchor = args.get("anchor")
    if anchor is not None:
        if not isinstance(anchor, str):
            raise MethodError("invalidArguments", "anchor must be an id")
        try:
            start = ids.index(anchor) + (args.get("anchorOffset") or 0)
        except ValueError:
            raise MethodError("anchorNotFound", f"{anchor!r} is not in the results") from None
        start = max(start, 0)
    else:
        start = args.get("position") or 0
        if start < 0:
            start = max(len(ids) + start, 0)
    start = min(start, len(ids))
    end = len(ids) if limit is None else start + limit
    return start, ids[start:end]
