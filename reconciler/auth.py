"""Credentials and endpoint discovery, the way OpenStack and Huawei Cloud users have them.

Sources, first match wins (``resolve`` documents the same order):

1. ``--token-file FILE``: a static token.
2. ``--os-cloud NAME`` or ``OS_CLOUD``: an entry of ``clouds.yaml`` (+ ``secure.yaml``), searched
   like openstacksdk: ``$OS_CLIENT_CONFIG_FILE``, ``./``, ``~/.config/openstack/``,
   ``/etc/openstack/``.
3. ``OS_AUTH_TOKEN``: a static token.
4. ``OS_AUTH_URL`` with ``OS_USERNAME``/``OS_USER_ID`` and ``OS_PASSWORD``: Keystone v3
   password auth (Huawei IAM is this flow with the region as the project name).
5. ``HUAWEICLOUD_SDK_AK`` and ``HUAWEICLOUD_SDK_SK`` (+ ``HUAWEICLOUD_SDK_PROJECT_ID``): every
   request is signed with ``SDK-HMAC-SHA256``.

Keystone tokens are refreshed ``REFRESH_MARGIN_S`` before they expire, one refresh at a time
however many workers ask, and once more after a 401. Secrets live only in these objects: their
``repr`` hides them and error messages are built without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import yaml

from reconciler import redaction
from reconciler.answers import KeystoneAnswer, ValidationError, problems
from reconciler.client import (
    ImageClient,
    RetryPolicy,
    StaticToken,
    TokenProvider,
    error_from_response,
    header_value_problem,
    http_client,
    http_date,
    refuse_userinfo,
    send_capped,
)
from reconciler.clock import SYSTEM_CLOCK, Clock
from reconciler.defaults import DEFAULT_REQUEST_TIMEOUT
from reconciler.errors import AuthError, ConfigError, MalformedResponse, TransportError
from reconciler.models import Target, parse_iso

REFRESH_MARGIN_S = 120.0


# --- Keystone v3 password ------------------------------------------------------------------

@dataclass
class KeystonePassword:
    """A TokenProvider backed by Keystone v3 (or Huawei IAM) password authentication."""

    auth_url: str
    password: str = field(repr=False)
    username: str | None = None
    user_id: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_name: str | None = None
    project_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    http: httpx.Client = field(default_factory=httpx.Client, repr=False)
    clock: Callable[[], datetime] = field(default=SYSTEM_CLOCK.now, repr=False)
    margin_s: float = REFRESH_MARGIN_S
    refreshes: int = 0  # authentications after the first one
    _token: str | None = field(default=None, repr=False)
    _expires: datetime | None = None
    _lifetime_s: float = 0.0
    _catalog: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _project_id: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _authenticated: bool = False

    def __post_init__(self) -> None:
        refuse_userinfo(self.auth_url, "the Keystone URL",
                        "the user and password go in OS_USERNAME and OS_PASSWORD (or auth: in "
                        "clouds.yaml)")
        redaction.register(self.password)
        if not (self.username or self.user_id):
            raise ConfigError("Keystone auth needs OS_USERNAME or OS_USER_ID")
        if self.username and not (self.user_domain_name or self.user_domain_id):
            raise ConfigError("Keystone auth by user name needs OS_USER_DOMAIN_NAME or "
                              "OS_USER_DOMAIN_ID (on Huawei Cloud: the account name)")
        if not (self.project_name or self.project_id):
            raise ConfigError("Keystone auth needs OS_PROJECT_NAME or OS_PROJECT_ID (on Huawei "
                              "Cloud the project name is the region, e.g. cn-north-4)")

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._expiring():
                self._authenticate()
            assert self._token is not None
            return self._token

    def invalidate(self, failed_token: str) -> bool:
        """After a 401: forget that token so the next ``token()`` authenticates again."""
        with self._lock:
            if self._token == failed_token:
                self._token = None
        return True

    def catalog(self) -> list[dict[str, Any]]:
        self.token()
        return self._catalog

    @property
    def scoped_project_id(self) -> str | None:
        """The project the token is scoped to: the owner of the images we create."""
        return self._project_id

    def _expiring(self) -> bool:
        if self._expires is None:
            return False
        # 120 s ahead, like keystoneauth; but never more than half a (short) token's life,
        # or every call would authenticate again.
        margin = min(self.margin_s, self._lifetime_s / 2)
        return (self._expires - self.clock()).total_seconds() < margin

    def _authenticate(self) -> None:
        url = self.auth_url.rstrip("/")
        url = f"{url}/auth/tokens" if url.endswith("/v3") else f"{url}/v3/auth/tokens"
        try:
            response = send_capped(self.http, self.http.build_request(
                "POST", url, json=self._body(), headers={"Accept": "application/json"}))
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise ConfigError(f"the Keystone URL {self.auth_url!r} is not valid ({exc}); "
                              "check OS_AUTH_URL or auth_url in clouds.yaml") from None
        except httpx.TransportError as exc:
            raise TransportError(f"cannot reach Keystone at {self.auth_url} "
                                 f"({type(exc).__name__})", sent=False) from None
        if response.status_code != 201:
            error = error_from_response(response, secrets=[self.password])
            if response.status_code == 401:
                who = self.username or self.user_id
                raise AuthError(f"Keystone at {self.auth_url} rejected the credentials of "
                                f"{who!r}: {error.message}", status=401,
                                request_id=error.request_id) from None
            raise error
        received = self.clock()
        token = response.headers.get("X-Subject-Token")
        try:
            body = KeystoneAnswer.model_validate_json(response.content).token
        except ValidationError as exc:
            found = problems(exc)
            raise MalformedResponse(f"Keystone at {self.auth_url} answered without a usable "
                                    f"token body ({'; '.join(found[:3])})", problems=found,
                                    status=response.status_code) from None
        if not token:
            raise MalformedResponse(f"Keystone at {self.auth_url} answered without "
                                    "X-Subject-Token", status=response.status_code)
        problem = header_value_problem(token)
        if problem:
            raise MalformedResponse(f"Keystone at {self.auth_url} answered with an unusable "
                                    f"X-Subject-Token: it {problem}", status=response.status_code)
        if self._authenticated:
            self.refreshes += 1
        self._authenticated = True
        # The expiry is kept on the local clock: the token's lifetime by the server's own
        # clock, counted from its receipt here. Comparing the server's expires_at with the
        # local time would make a server 2 h behind look expired forever (a login per call).
        lifetime = body.lifetime_s(http_date(response.headers.get("date", "")))
        self._lifetime_s = lifetime if lifetime is not None else max(
            0.0, (parse_iso(body.expires_at) - received).total_seconds())
        redaction.register(token)
        self._token = token
        self._expires = received + timedelta(seconds=self._lifetime_s)
        self._catalog = list(body.catalog or [])
        self._project_id = body.project.id if body.project else self.project_id

    def _body(self) -> dict[str, Any]:
        user: dict[str, Any] = {"password": self.password}
        if self.user_id:
            user["id"] = self.user_id
        else:
            user["name"] = self.username
            user["domain"] = _ref(self.user_domain_name, self.user_domain_id)
        if self.project_id:
            project: dict[str, Any] = {"id": self.project_id}
        else:
            project = {"name": self.project_name,
                       "domain": _ref(self.project_domain_name or self.user_domain_name,
                                      self.project_domain_id or self.user_domain_id)}
        return {"auth": {"identity": {"methods": ["password"], "password": {"user": user}},
                         "scope": {"project": project}}}


def _ref(name: str | None, ident: str | None) -> dict[str, str]:
    return {"id": ident} if ident else {"name": name or "Default"}


def image_endpoint(catalog: list[dict[str, Any]], *, region: str | None,
                   interface: str = "public") -> str:
    """The ``image`` service's URL for the region and interface, as the openstack CLI picks."""
    services = [s for s in catalog if s.get("type") == "image"]
    if not services:
        raise ConfigError("the token's service catalog has no image service; pass --endpoint")
    found = [e for s in services for e in s.get("endpoints", [])
             if e.get("interface") == interface
             and (region is None or region in (e.get("region"), e.get("region_id")))]
    if not found:
        regions = sorted({str(e.get("region_id") or e.get("region")) for s in services
                          for e in s.get("endpoints", [])})
        raise ConfigError(f"no {interface} image endpoint for region {region or '(any)'} in the "
                          f"service catalog (regions: {', '.join(regions) or 'none'}); set "
                          "the region to one of these (OS_REGION_NAME, region_name in "
                          "clouds.yaml, or the target's region:) or give the endpoint "
                          "(--endpoint, or the target's endpoint:)")
    if region is None and len({e.get("region_id") or e.get("region") for e in found}) > 1:
        raise ConfigError("the image service has endpoints in several regions; set "
                          "OS_REGION_NAME (or region_name in clouds.yaml)")
    return str(found[0]["url"])


# --- Huawei AK/SK signing ------------------------------------------------------------------

SIGN_ALGORITHM = "SDK-HMAC-SHA256"
_SIGNED = ("content-type", "host", "x-project-id", "x-sdk-date", "x-security-token")


@dataclass
class AkSkAuth(httpx.Auth):
    """Signs each request like Huawei's SDK (``huaweicloudsdkcore.signer.Signer``)."""

    requires_request_body = True

    ak: str
    sk: str = field(repr=False)
    project_id: str
    security_token: str | None = field(default=None, repr=False)
    clock: Callable[[], datetime] = field(default=SYSTEM_CLOCK.now, repr=False)

    def __post_init__(self) -> None:
        redaction.register(self.sk, self.security_token)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request

    def sign(self, request: httpx.Request) -> None:
        request.headers["X-Sdk-Date"] = self.clock().strftime("%Y%m%dT%H%M%SZ")
        request.headers["X-Project-Id"] = self.project_id
        if self.security_token:
            request.headers["X-Security-Token"] = self.security_token
        request.headers.pop("X-Auth-Token", None)
        signed = sorted(h for h in _SIGNED if h in request.headers)
        string_to_sign = "\n".join([SIGN_ALGORITHM, request.headers["X-Sdk-Date"],
                                    hashlib.sha256(canonical_request(request, signed).encode())
                                    .hexdigest()])
        signature = hmac.new(self.sk.encode(), string_to_sign.encode(), hashlib.sha256)
        request.headers["Authorization"] = (
            f"{SIGN_ALGORITHM} Access={self.ak}, SignedHeaders={';'.join(signed)}, "
            f"Signature={signature.hexdigest()}")


def canonical_request(request: httpx.Request, signed: list[str]) -> str:
    raw_path = request.url.raw_path.split(b"?", 1)[0].decode("ascii")  # still percent-encoded
    path = "/".join(quote(part, safe="~") for part in unquote(raw_path).split("/"))
    if not path.endswith("/"):
        path += "/"
    query = "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}"
                     for k, v in sorted(request.url.params.multi_items()))
    headers = "".join(f"{h}:{request.headers[h].strip()}\n" for h in signed)
    body = hashlib.sha256(request.content).hexdigest()
    return "\n".join([request.method.upper(), path, query, headers, ";".join(signed), body])


class NoToken:
    """The TokenProvider for signed requests: there is no token to send or refresh."""

    refreshes = 0

    def token(self) -> str:
        return ""

    def invalidate(self, failed_token: str) -> bool:
        return False


# --- clouds.yaml ---------------------------------------------------------------------------

def config_dirs(env: Mapping[str, str]) -> list[Path]:
    return [Path.cwd(), Path(env.get("HOME", "~")).expanduser() / ".config" / "openstack",
            Path("/etc/openstack")]


def _find(env: Mapping[str, str], names: tuple[str, ...], override: str) -> Path | None:
    if env.get(override):
        path = Path(env[override]).expanduser()
        if not path.is_file():
            raise ConfigError(f"{override}={path} does not exist")
        return path
    for directory in config_dirs(env):
        for name in names:
            if (directory / name).is_file():
                return directory / name
    return None


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("clouds", {}), dict):
        raise ConfigError(f"{path}: expected a mapping with `clouds:`")
    return data


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


def load_cloud(name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The named cloud of clouds.yaml, with secure.yaml merged over it."""
    clouds_path = _find(env, ("clouds.yaml", "clouds.yml"), "OS_CLIENT_CONFIG_FILE")
    if clouds_path is None:
        raise ConfigError(f"cloud {name!r} requested but no clouds.yaml found (looked in "
                          + ", ".join(str(d) for d in config_dirs(env)) + ")")
    clouds = _load_yaml(clouds_path).get("clouds", {})
    if name not in clouds:
        raise ConfigError(f"{clouds_path} has no cloud {name!r}; it has: "
                          + (", ".join(sorted(clouds)) or "none"))
    cloud = _mapping(clouds[name], f"{clouds_path}: cloud {name!r}")
    secure_path = _find(env, ("secure.yaml", "secure.yml"), "OS_CLIENT_SECURE_FILE")
    if secure_path is not None:
        secure = _load_yaml(secure_path).get("clouds", {}).get(name, {})
        cloud = _merge(cloud, _mapping(secure, f"{secure_path}: cloud {name!r}"))
    _mapping(cloud.get("auth") or {}, f"{clouds_path}: cloud {name!r}: auth")
    return cloud


# --- resolution ----------------------------------------------------------------------------

@dataclass
class Credentials:
    """How to authenticate and where the Image API is."""

    tokens: TokenProvider
    endpoint: str
    source: str  # for messages: "token file", "clouds.yaml cloud 'x'", ...
    signer: httpx.Auth | None = None
    verify: bool | str = True

    @property
    def refreshes(self) -> int:
        return int(getattr(self.tokens, "refreshes", 0))

    @property
    def project_id(self) -> str | None:
        """Our project, when the credentials tell (Keystone token scope, AK/SK project)."""
        if isinstance(self.tokens, KeystonePassword):
            return self.tokens.scoped_project_id
        return self.signer.project_id if isinstance(self.signer, AkSkAuth) else None


@dataclass(frozen=True)
class Scope:
    """What a catalog target asks of the credentials it is given (``None``: as they are):
    the region whose image endpoint the service catalog gives, and the project to scope to,
    by name or, 32 hex digits as Keystone and Huawei IAM make them, by id."""

    region: str | None = None
    project: str | None = None

    def project_fields(self) -> dict[str, str]:
        if not self.project:
            return {}
        if _PROJECT_ID.match(self.project):
            return {"project_id": self.project}
        return {"project_name": self.project}


_PROJECT_ID = re.compile(r"[0-9a-fA-F]{32}\Z")


def resolve(env: Mapping[str, str], *, endpoint: str | None, token_file: Path | None,
            os_cloud: str | None, interface: str | None, cacert: str | None,
            insecure: bool, http_factory: Callable[[bool | str], httpx.Client],
            scope: Scope = Scope()) -> Credentials:
    """Pick the credential source (first match of the module docstring's list).

    ``scope``: a target's region and project, which win over the source's own."""
    verify: bool | str = False if insecure else (cacert or env.get("OS_CACERT") or True)
    if token_file is not None:
        _no_project(scope, "--token-file")
        return Credentials(StaticToken(_read_token(token_file), f"--token-file {token_file}"),
                           _need(endpoint),
                           "--token-file", verify=verify)
    cloud_name = os_cloud or env.get("OS_CLOUD") or None
    if cloud_name is not None:
        return _from_cloud(cloud_name, env, endpoint, interface, verify, http_factory, scope)
    if env.get("OS_AUTH_TOKEN", "").strip():
        _no_project(scope, "OS_AUTH_TOKEN")
        return Credentials(StaticToken(env["OS_AUTH_TOKEN"].strip(), "OS_AUTH_TOKEN"),
                           _need(endpoint),
                           "OS_AUTH_TOKEN", verify=verify)
    if env.get("OS_AUTH_URL"):
        auth = {k[3:].lower(): v for k, v in env.items() if k.startswith("OS_") and v}
        return _keystone(_scoped(auth, scope), scope.region or env.get("OS_REGION_NAME"),
                         endpoint, interface or env.get("OS_INTERFACE") or "public", verify,
                         http_factory, "OS_* variables")
    if env.get("HUAWEICLOUD_SDK_AK") or env.get("HUAWEICLOUD_SDK_SK"):
        ak, sk = env.get("HUAWEICLOUD_SDK_AK", ""), env.get("HUAWEICLOUD_SDK_SK", "")
        project = scope.project_fields().get("project_id") or env.get(
            "HUAWEICLOUD_SDK_PROJECT_ID") or env.get("OS_PROJECT_ID", "")
        if scope.project and scope.project != project:
            raise ConfigError(f"project {scope.project!r}: AK/SK signing names the project by "
                              "its id (32 hex digits); give the id")
        if not (ak and sk and project):
            raise ConfigError("AK/SK signing needs HUAWEICLOUD_SDK_AK, HUAWEICLOUD_SDK_SK and "
                              "HUAWEICLOUD_SDK_PROJECT_ID")
        signer = AkSkAuth(ak, sk, project, env.get("HUAWEICLOUD_SDK_SECURITY_TOKEN") or None)
        return Credentials(NoToken(), _need(endpoint), "AK/SK", signer=signer, verify=verify)
    raise ConfigError("no credentials: set OS_AUTH_TOKEN, or OS_CLOUD (clouds.yaml), or "
                      "OS_AUTH_URL with OS_USERNAME and OS_PASSWORD, or HUAWEICLOUD_SDK_AK/SK, "
                      "or pass --token-file FILE")


def _scoped(auth: Mapping[str, str], scope: Scope) -> dict[str, str]:
    """Keystone auth settings with a target's project in place of their own."""
    if not scope.project:
        return dict(auth)
    drop = {"project_name", "project_id", "tenant_name", "tenant_id"}
    return {**{k: v for k, v in auth.items() if k not in drop}, **scope.project_fields()}


def _no_project(scope: Scope, source: str) -> None:
    if scope.project:
        raise ConfigError(f"project {scope.project!r} was asked for, but a static token "
                          f"({source}) is scoped to the project it was issued for; use "
                          "password credentials (clouds.yaml or OS_AUTH_URL) to scope to "
                          "each target's project")


def _need(endpoint: str | None) -> str:
    if not endpoint:
        raise ConfigError("this credential gives no service catalog: pass --endpoint URL or "
                          "set RECONCILE_ENDPOINT")
    return endpoint


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --token-file {path}: "
                          f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
    if not token:
        raise ConfigError(f"--token-file {path} is empty")
    return token


def _from_cloud(name: str, env: Mapping[str, str], endpoint: str | None,
                interface: str | None, verify: bool | str,
                http_factory: Callable[[bool | str], httpx.Client],
                scope: Scope = Scope()) -> Credentials:
    cloud = load_cloud(name, env)
    auth = {k: str(v) for k, v in (cloud.get("auth") or {}).items() if v is not None}
    if verify is True:
        if cloud.get("cacert"):
            verify = str(cloud["cacert"])
        elif cloud.get("verify") is False:
            verify = False
    source = f"clouds.yaml cloud {name!r}"
    if cloud.get("auth_type") in ("token", "v3token", "admin_token") or (
            "token" in auth and "password" not in auth):
        if "token" not in auth:
            raise ConfigError(f"{source} has auth_type token but no auth.token")
        _no_project(scope, source)
        return Credentials(StaticToken(auth["token"], f"{source}: auth.token"),
                           _need(endpoint or cloud.get(
            "image_endpoint_override")), source, verify=verify)
    return _keystone(_scoped(auth, scope), scope.region or cloud.get("region_name"),
                     endpoint or cloud.get(
        "image_endpoint_override"), interface or cloud.get("interface") or "public", verify,
        http_factory, source)


def _keystone(auth: Mapping[str, str], region: str | None, endpoint: str | None,
              interface: str, verify: bool | str,
              http_factory: Callable[[bool | str], httpx.Client], source: str) -> Credentials:
    if not auth.get("auth_url"):
        raise ConfigError(f"{source}: auth_url is missing")
    if not auth.get("password"):
        raise ConfigError(f"{source}: a password is needed (OS_PASSWORD or auth.password)")
    provider = KeystonePassword(
        auth_url=auth["auth_url"], password=auth["password"], username=auth.get("username"),
        user_id=auth.get("user_id"),
        user_domain_name=auth.get("user_domain_name") or auth.get("domain_name"),
        user_domain_id=auth.get("user_domain_id") or auth.get("domain_id"),
        project_name=auth.get("project_name") or auth.get("tenant_name"),
        project_id=auth.get("project_id") or auth.get("tenant_id"),
        project_domain_name=auth.get("project_domain_name"),
        project_domain_id=auth.get("project_domain_id"), http=http_factory(verify))
    url = endpoint or image_endpoint(provider.catalog(), region=region, interface=interface)
    return Credentials(provider, url, source, verify=verify)


# --- a ready session ---------------------------------------------------------------------

@dataclass(frozen=True)
class ConnectOptions:
    """Where credentials come from and how patiently to talk: the commands' auth flags."""

    token_file: Path | None = None
    os_cloud: str | None = None
    interface: str | None = None
    cacert: str | None = None
    insecure: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    scope: Scope = Scope()  # a catalog target's region and project


INSECURE_WARNING = ("TLS certificates are NOT verified (--insecure or verify: false); anyone "
                    "on the network path can read the token and change answers")


@dataclass(frozen=True)
class ApiSession:
    """An authenticated Image API client and the credentials behind it."""

    client: ImageClient
    credentials: Credentials

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    @property
    def refreshes(self) -> int:
        return self.credentials.refreshes

    @property
    def project_id(self) -> str | None:
        return self.credentials.project_id


@contextlib.contextmanager
def open_session(env: Mapping[str, str], endpoint: str | None, options: ConnectOptions, *,
                 retries: int = 5, clock: Clock = SYSTEM_CLOCK,
                 warn: Callable[[str], None] = lambda message: None,
                 limiter: threading.Semaphore | None = None) -> Iterator[ApiSession]:
    """Resolve the credentials, authenticate, and yield a client; closed afterwards.

    Authenticates at once, so bad credentials fail before any work starts. ``warn`` gets
    ``INSECURE_WARNING`` on every run without TLS verification, whether from ``--insecure``
    or ``verify: false`` in clouds.yaml. Reads are retried ``retries`` times (writes never:
    docs/architecture.md §6.5). ``limiter``: shared by the sessions of several targets,
    it bounds their requests in flight together (docs/architecture.md §13).
    """
    def factory(verify: bool | str) -> httpx.Client:
        return http_client(verify, connect_timeout=options.connect_timeout,
                           read_timeout=options.read_timeout,
                           request_timeout=options.request_timeout)

    creds = resolve(env, endpoint=endpoint, token_file=options.token_file,
                    os_cloud=options.os_cloud, interface=options.interface,
                    cacert=options.cacert, insecure=options.insecure, http_factory=factory,
                    scope=options.scope)
    if creds.verify is False:
        warn(INSECURE_WARNING)
    creds.tokens.token()
    client = ImageClient(creds.endpoint, token_provider=creds.tokens, auth=creds.signer,
                         verify=creds.verify, connect_timeout=options.connect_timeout,
                         read_timeout=options.read_timeout,
                         request_timeout=options.request_timeout,
                         read_retry=RetryPolicy(attempts=retries + 1), clock=clock,
                         limiter=limiter)
    try:
        yield ApiSession(client, creds)
    finally:
        client.close()


@dataclass(frozen=True)
class Connector:
    """How a command connects: the environment and auth flags it was given, how often reads
    are retried, where the TLS warning goes, and (several targets) the one bound on requests
    in flight that all their sessions share (docs/architecture.md §13)."""

    env: Mapping[str, str]
    options: ConnectOptions
    retries: int = 5
    clock: Clock = SYSTEM_CLOCK
    warn: Callable[[str], None] = lambda message: None
    limiter: threading.Semaphore | None = None

    def session(self, endpoint: str | None, options: ConnectOptions | None = None,
                ) -> contextlib.AbstractContextManager[ApiSession]:
        """A session at ``endpoint`` (None: the one the credentials lead to)."""
        return open_session(self.env, endpoint, options or self.options,
                            retries=self.retries, clock=self.clock, warn=self.warn,
                            limiter=self.limiter)

    def target(self, target: Target) -> contextlib.AbstractContextManager[ApiSession]:
        """A session for a catalog target: its clouds.yaml entry (over the run's
        --token-file or --os-cloud), else the run's credentials; its region and project."""
        options = replace(self.options, scope=Scope(target.region, target.project))
        if target.cloud:
            options = replace(options, os_cloud=target.cloud, token_file=None)
        return self.session(target.endpoint, options)
