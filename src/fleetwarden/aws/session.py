"""The session factory: the ONLY place boto3 clients are made.

It owns the credential chain, assume-role per account (ExternalId, a session name carrying the run id),
a credential cache that refreshes before expiry, botocore retries (standard mode by default), connect and
read timeouts so a dead region fails fast, the endpoint override (`aws.endpoint_url` or `AWS_ENDPOINT_URL`)
and a client cache per (account, region, service).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3
import botocore.client
import botocore.session
from botocore.config import Config as BotoConfig
from botocore.credentials import RefreshableCredentials

from ..config import AwsSettings

log = logging.getLogger(__name__)


# botocore builds a new client class (hundreds of generated methods; ~75% of the cost of a client and ~1.5 MB)
# for every client. Sessions made by a SessionFactory share one class per (service, API version) instead:
# the factory marks its sessions' event emitters with its class cache, and this wrapper, installed once, uses
# the cache only for marked emitters (every other botocore session in the process is left as it was).
_CACHE_ATTR = "_fleetwarden_client_classes"
_install_lock = threading.Lock()
_installed = False


def _install_client_class_cache() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        original = botocore.client.ClientCreator._create_client_class

        def create_client_class(self: Any, service_name: str, service_model: Any) -> Any:
            cache = getattr(self._event_emitter, _CACHE_ATTR, None)
            if cache is None:
                return original(self, service_name, service_model)
            key = (service_name, service_model.api_version)
            with cache["lock"]:
                cls = cache["classes"].get(key)
                if cls is None:
                    cls = cache["classes"][key] = original(self, service_name, service_model)
            return cls

        botocore.client.ClientCreator._create_client_class = create_client_class
        _installed = True


def _locked(lock: threading.RLock, method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return method(*args, **kwargs)

    return call


@dataclass(frozen=True)
class AccountAccess:
    """How to reach one account: a role to assume, or the current credentials when role_arn is None."""

    account_id: str
    role_arn: str | None = None
    external_id: str | None = None
    name: str | None = None


class ApiCallCounter:
    """Counts API calls per service operation, hooked into every client's `before-call` event."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}

    def __call__(self, model: Any = None, **_: Any) -> None:
        if model is None:
            return
        key = f"{model.service_model.service_name}:{model.name}"
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.calls.values())


def _base_session(profile: str | None = None) -> boto3.Session:
    """The session of a named profile, else of the default credential chain; an unknown profile (named or
    AWS_PROFILE) is one line (exit 2), not a traceback."""
    from botocore.exceptions import ProfileNotFound

    from ..errors import CredentialsError

    try:
        return boto3.Session(profile_name=profile)
    except ProfileNotFound as exc:
        known = ", ".join(sorted(botocore.session.Session(profile=None).available_profiles)) or "none"
        name = exc.kwargs.get("profile", "?")
        raise CredentialsError(
            f"AWS profile {name!r} is not in the AWS config or credentials files (profiles there: {known}); "
            "nothing was done"
        ) from None


class SessionFactory:
    """Makes and caches boto3 clients per (account, region, service); assumes roles as needed."""

    def __init__(
        self,
        settings: AwsSettings | None = None,
        run_id: str = "local",
        base_session: boto3.Session | None = None,
    ) -> None:
        self.settings = settings or AwsSettings()
        self.run_id = run_id
        self.endpoint_url = self.settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        if self.endpoint_url and not self.settings.endpoint_url:
            from ..config import endpoint_url_problem
            from ..errors import ConfigError, ConfigProblem

            problem = endpoint_url_problem(self.endpoint_url)
            if problem:  # botocore would fail at the first client with a bare ValueError
                raise ConfigError("the environment", [ConfigProblem("AWS_ENDPOINT_URL", problem)])
        self.counter = ApiCallCounter()
        self._base = base_session or _base_session(self.settings.profile)
        # One botocore data loader shared by every session, so service models load once per process. Its
        # caches are not locked: without this, every account's first client parses the same model at once.
        self._loader = self._base._session.get_component("data_loader")
        loader_lock = threading.RLock()
        for name in ("load_service_model", "load_data", "load_data_with_path"):
            setattr(self._loader, name, _locked(loader_lock, getattr(self._loader, name)))
        self._class_cache: dict[str, Any] = {"lock": threading.Lock(), "classes": {}}
        _install_client_class_cache()
        self._share_client_classes(self._base)
        self._lock = threading.Lock()
        self._sessions: dict[str, boto3.Session] = {}
        self._session_locks: dict[str, threading.Lock] = {}
        # Clients per (account, region, service), least recently used first; bounded so that memory does not
        # grow with the number of targets (a client evicted while in use stays valid for its holder).
        self._clients: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._max_clients = max(64, 4 * self.settings.max_concurrency)
        self._accounts: dict[str, AccountAccess] = {}
        self._caller: dict[str, str] | None = None
        self.boto_config = BotoConfig(
            retries={"mode": self.settings.retry_mode, "max_attempts": self.settings.max_attempts},
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            max_pool_connections=max(10, min(self.settings.max_concurrency, 64)),
            user_agent_extra="fleetwarden",
        )

    # -- accounts -------------------------------------------------------------------------------------
    def register_account(self, access: AccountAccess) -> None:
        """Tell the factory how to reach an account (role or current credentials)."""
        with self._lock:
            self._accounts[access.account_id] = access

    def access(self, account_id: str) -> AccountAccess:
        with self._lock:
            return self._accounts.get(account_id) or AccountAccess(account_id)

    @property
    def session_name(self) -> str:
        # RoleSessionName: 2-64 chars of [\w+=,.@-]
        return f"fleetwarden-{self.run_id}"[:64]

    def caller_identity(self) -> dict[str, str]:
        """The principal fleetwarden runs as (base credentials), fetched once."""
        if self._caller is None:
            sts = self._make_client(self._base, "sts", self.settings.sts_region)
            ident = sts.get_caller_identity()
            self._caller = {"account_id": ident["Account"], "arn": ident["Arn"], "user_id": ident["UserId"]}
        return self._caller

    def sibling(self) -> SessionFactory:
        """A factory over the same base credentials, settings, endpoint and call counter, with an account map of
        its own: for an account reached through another role than the fleet's (the payer's billing role)."""
        other = SessionFactory(self.settings, run_id=self.run_id, base_session=self._base)
        other.endpoint_url = self.endpoint_url
        other.counter = self.counter
        return other

    def credentials(self) -> Any:
        """The base credentials (botocore refreshes them), for clients that sign requests themselves (SigV4
        for OpenSearch); None when there are none."""
        return self._base.get_credentials()

    # -- sessions -------------------------------------------------------------------------------------
    def _session_for(self, account_id: str) -> tuple[boto3.Session, threading.Lock]:
        with self._lock:
            lock = self._session_locks.setdefault(account_id, threading.Lock())
        # One lock per account: its role is assumed once even when many regions ask at the same time,
        # while other accounts proceed in parallel.
        with lock:
            session = self._sessions.get(account_id)
            if session is None:
                access = self.access(account_id)
                session = self._base if access.role_arn is None else self._assumed_session(access)
                self._sessions[account_id] = session
        if session is self._base:
            return session, self._lock_for_base()
        return session, lock

    def _assumed_session(self, access: AccountAccess) -> boto3.Session:
        assert access.role_arn is not None
        sts = self.client("sts", region=self.settings.sts_region)
        role_arn = access.role_arn

        def refresh() -> dict[str, str]:
            kwargs: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": self.session_name}
            if access.external_id:
                kwargs["ExternalId"] = access.external_id
            log.debug("assuming %s", role_arn)
            creds = sts.assume_role(**kwargs)["Credentials"]
            expiry: datetime = creds["Expiration"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": expiry.isoformat(),
            }

        # RefreshableCredentials calls refresh() lazily, and again shortly before expiry.
        credentials = RefreshableCredentials.create_from_metadata(
            metadata=refresh(), refresh_using=refresh, method="sts-assume-role"
        )
        bc_session = botocore.session.get_session()
        bc_session.register_component("data_loader", self._loader)
        bc_session._credentials = credentials
        session = boto3.Session(botocore_session=bc_session)
        self._share_client_classes(session)
        return session

    def _share_client_classes(self, session: boto3.Session) -> None:
        setattr(session._session.get_component("event_emitter"), _CACHE_ATTR, self._class_cache)

    # -- clients --------------------------------------------------------------------------------------
    def _make_client(self, session: boto3.Session, service: str, region: str) -> Any:
        client = session.client(
            service,
            region_name=region,
            endpoint_url=self.endpoint_url,
            config=self.boto_config,
        )
        client.meta.events.register("before-call", self.counter)
        return client

    def client(self, service: str, *, region: str, account_id: str | None = None) -> Any:
        """A cached client for `service` in `region`, in `account_id` (None: the base credentials)."""
        key = (account_id or "", region, service)
        with self._lock:
            cached = self._clients.get(key)
            if cached is not None:
                self._clients.move_to_end(key)
        if cached is not None:
            return cached
        if account_id is None:
            session, lock = self._base, self._lock_for_base()
        else:
            session, lock = self._session_for(account_id)
        # boto3 sessions are not thread-safe for client creation; clients are.
        with lock:
            with self._lock:
                cached = self._clients.get(key)
            if cached is not None:
                return cached
            client = self._make_client(session, service, region)
        with self._lock:
            client = self._clients.setdefault(key, client)
            while len(self._clients) > self._max_clients:
                self._clients.popitem(last=False)
            return client

    def _lock_for_base(self) -> threading.Lock:
        with self._lock:
            return self._session_locks.setdefault("", threading.Lock())


def reaching(factory: SessionFactory, wanted: AccountAccess) -> SessionFactory:
    """A factory that reaches `wanted.account_id` exactly as `wanted` says: `factory` itself when it already does,
    else a sibling (same base credentials and call counter) with that access registered. Registering it on the
    shared factory would be ignored once the account's session is cached, or change how the fleet reaches it."""
    current = factory.access(wanted.account_id)
    if (current.role_arn, current.external_id) == (wanted.role_arn, wanted.external_id):
        return factory
    reader = factory.sibling()
    reader.register_account(wanted)
    return reader
