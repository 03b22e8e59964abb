"""Certificates for `https: auto` customers, from an ACME CA (RFC 8555), kept in the store.

The issuer runs in `cdnctl serve`. Every few seconds it compares what the customers
ask for with what the store holds: a customer marked `https: auto` with no
certificate, one for other names, or one within `renew_before` of its expiry gets
an order. The flow, with certbot's `acme` library (blocking, so in a thread):

    new order (a fresh P-256 key, a CSR for every name of the customer)
    -> HTTP-01 key authorizations written to config/acme/{token}
    -> wait until every edge has applied that revision (the CA may ask any of them)
    -> tell the CA to validate; poll; finalize
    -> config/certs/{directory} = {cert, key sealed, names, not_after, serial}

Edges load the certificate from there without a restart (edge/fleet/certs.py).
The state each customer is in lives in certstatus/{directory} (outside config/:
edges never see it) for the API, the page and `cdnctl certs`: issuing | active
(expires ...) | failed (reason), with the next attempt after a failure backing off
from `retry` seconds, doubling to `retry_max`. A failure never removes a working
certificate: renewal starts early enough to be retried for weeks.

Two control planes over one store do not both order: the one that moves the
status to `issuing` (a compare on the status key's revision) owns the attempt.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from cdnkit import certs
from cdnkit.keys import Keys
from cdnkit.seal import SealError
from cdnkit.store import StoreError

from .service import EDGE_KINDS, ControlPlane

log = logging.getLogger("control.acme")

DAY = 86400.0
STUCK = 600.0             # an `issuing` status this old belongs to a control plane that died


@dataclass(frozen=True)
class AcmeOptions:
    """Where certificates come from and when they are renewed."""

    directory: str = ""                  # the CA's directory URL; "" = no ACME
    email: str = ""
    ca_file: str = ""                    # CAs to trust for the ACME server's HTTPS
    renew_before: float = 30 * DAY       # renew this long before expiry
    retry: float = 60.0                  # first back-off after a failure
    retry_max: float = 6 * 3600.0
    interval: float = 5.0                # how often the issuer looks
    edge_wait: float = 60.0              # how long edges may take to apply a challenge
    order_timeout: float = 90.0          # validation and finalization at the CA


@dataclass(frozen=True)
class Want:
    """A customer that needs a certificate now, and why."""

    directory: str
    names: tuple[str, ...]
    why: str                             # "new" | "names changed" | "renewal" | "retry"


def cert_names(doc: dict[str, Any]) -> tuple[str, ...]:
    """The names a customer's certificate must cover: every one of its CNAMEs."""
    return tuple(sorted({str(n).lower().rstrip(".") for n in doc.get("cnames") or ()}))


def status_of(raw: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        value = {}
    return value if isinstance(value, dict) else {}


def due(directory: str, doc: dict[str, Any], cert: dict[str, Any] | None,
        status: dict[str, Any], now: float, opts: AcmeOptions) -> Want | None:
    """Whether `directory` needs an order now (None: it has what it needs, or waits)."""
    names = cert_names(doc)
    if not names:
        return None
    if status.get("state") == "issuing" and now - float(status.get("since", 0)) < STUCK:
        return None
    if status.get("state") == "failed" and now < float(status.get("next_attempt") or 0):
        return None
    if not cert:
        why = "new"
    elif status.get("renew"):
        why = "asked"
    elif tuple(sorted(cert.get("names") or ())) != names:
        why = "names changed"
    elif _expiry(cert) - now < min(opts.renew_before, _lifetime(cert, status) / 2):
        why = "renewal"
    else:
        return None
    return Want(directory, names, "retry" if status.get("state") == "failed" else why)


def _expiry(cert: dict[str, Any]) -> float:
    try:
        return datetime.datetime.fromisoformat(str(cert["not_after"])).timestamp()
    except (KeyError, ValueError):
        return 0.0


def _lifetime(cert: dict[str, Any], status: dict[str, Any]) -> float:
    """How long the certificate was issued for: renewal never starts before half of it
    has passed, whatever renew_before says (a 90-day CA and a 120-day setting would
    otherwise order again at every look, into the CA's rate limits)."""
    issued = float(status.get("issued") or 0)
    return _expiry(cert) - issued if issued else float("inf")


def backoff(attempts: int, opts: AcmeOptions) -> float:
    """Seconds until the next attempt after `attempts` failures in a row."""
    return min(opts.retry_max, opts.retry * 2 ** max(0, attempts - 1))


class Issuer:
    """Orders, renews and removes the ACME certificates of one store's customers."""

    def __init__(self, plane: ControlPlane, opts: AcmeOptions):
        self.plane, self.opts = plane, opts
        self.keys: Keys = plane.keys
        self._account = None                # (client, account key), made on first use

    async def run(self) -> None:
        while True:
            try:
                await self.once()
            except StoreError as exc:
                log.debug("acme: store unavailable (%s)", exc)
            except Exception:               # a bug must not stop renewals for good
                log.exception("acme: the issuer failed; trying again")
            await asyncio.sleep(self.opts.interval)

    async def once(self) -> list[str]:
        """One look at every customer: orders what is due, removes what is no longer
        wanted. The directories ordered for (each one done or failed)."""
        plane, keys = self.plane, self.keys
        view = await plane.view()
        statuses = (await plane.store.load(keys.cert_status)).under(keys.cert_status)
        held = view.snap.under(keys.certs)
        await self._tidy(view, held, statuses)
        now, done = time.time(), []
        for directory, (doc, _entry) in sorted(view.customers.items()):
            if doc.get("https") != "auto":
                continue
            entry = statuses.get(directory)
            status = status_of(entry.value if entry else None)
            cert = status_of(held[directory].value) if directory in held else None
            want = due(directory, doc, cert, status, now, self.opts)
            if want is None:
                continue
            if await self.order(want, status, entry.mod_revision if entry else 0):
                done.append(directory)
        return done

    # --- one order -----------------------------------------------------------------------

    async def order(self, want: Want, status: dict[str, Any], status_rev: int) -> bool:
        """Order a certificate for `want`; False when another control plane has it."""
        attempts = int(status.get("attempts", 0)) + 1 if status.get("state") == "failed" else 1
        kept = {k: status[k] for k in ("expires", "serial", "issued", "names") if k in status}
        mine = await self._set_status(want.directory, {
            **kept, "state": "issuing", "reason": "", "since": time.time(),
            "next_attempt": None, "attempts": attempts, "why": want.why}, expect=status_rev)
        if not mine:
            return False
        log.info("acme: ordering a certificate for %s (%s): %s", want.directory, want.why,
                 ", ".join(want.names))
        tokens: list[str] = []
        try:
            info, record = await self._issue(want, tokens)
        except Exception as exc:           # every failure is the customer's status, retried
            reason = describe(exc)
            wait = backoff(attempts, self.opts)
            log.warning("acme: %s failed (attempt %d, again in %.0f s): %s", want.directory,
                        attempts, wait, reason)
            await self._set_status(want.directory, {
                **kept, "state": "failed", "reason": reason, "since": time.time(),
                "next_attempt": time.time() + wait, "attempts": attempts, "why": want.why})
            return True
        finally:
            await self._drop_challenges(tokens)
        await self._store_cert(want.directory, record, info)
        log.info("acme: %s has a certificate until %s (serial %s)", want.directory,
                 info.expires, info.serial)
        return True

    async def _issue(self, want: Want, tokens: list[str]) -> tuple[certs.CertInfo, dict]:
        if not self.opts.directory:
            raise IssueError("no ACME CA is configured (cdnctl serve --acme-directory URL)")
        sealer = self.plane.sealer
        if sealer is None:
            raise IssueError("this control plane has no --key-file; it cannot store "
                             "certificate keys")
        key_pem = _new_key()
        client, account_key = await asyncio.to_thread(self._client)
        order = await asyncio.to_thread(client.new_order, _csr(key_pem, want.names))
        answers = _http01(order, account_key)
        if answers:
            tokens.extend(token for token, _, _, _ in answers)
            revision = await self._publish(answers, want.names)
            await self._wait_for_edges(revision)
            for _, _, challenge, response in answers:
                await asyncio.to_thread(client.answer_challenge, challenge, response)
        deadline = datetime.datetime.now() + datetime.timedelta(
            seconds=self.opts.order_timeout)
        order = await asyncio.to_thread(client.poll_and_finalize, order, deadline)
        chain = order.fullchain_pem
        info = certs.inspect(chain, key_pem.decode())
        where = self.keys.cert(want.directory) + "/key"
        return info, {"cert": chain, "key": sealer.seal(key_pem.decode(), where),
                      "names": list(want.names), "not_after": info.not_after.isoformat(),
                      "serial": info.serial}

    def _client(self) -> tuple[Any, Any]:
        """The ACME client with its account (registered, or found again by its key)."""
        if self._account is not None:
            return self._account
        import josepy
        from acme import client, errors, messages
        from cryptography.hazmat.primitives.asymmetric import ec

        key = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = client.ClientNetwork(key, alg=josepy.ES256, user_agent="gslb-cdnctl",
                                   verify_ssl=self.opts.ca_file or True)
        acme = client.ClientV2(client.ClientV2.get_directory(self.opts.directory, net), net)
        new = messages.NewRegistration.from_data(
            email=self.opts.email or None, terms_of_service_agreed=True)
        try:
            acme.new_account(new)
        except errors.ConflictError as exc:     # the key has an account already
            net.account = messages.RegistrationResource(uri=exc.location,
                                                        body=messages.Registration())
        self._account = (acme, key)
        return self._account

    async def _publish(self, answers: list, names: tuple[str, ...]) -> int:
        """The key authorizations, for every edge to answer; the store revision."""
        store, keys = self.plane.store, self.keys
        expires = time.time() + self.opts.order_timeout + self.opts.edge_wait + 60
        ops = [store.put(keys.challenges + token, json.dumps(
            {"authorization": authorization, "names": list(names), "expires": expires}))
            for token, authorization, _, _ in answers]
        return int((await store.txn([], ops)).header.revision)

    async def _wait_for_edges(self, revision: int) -> None:
        """Until every registered edge and shield has applied `revision` (the CA may
        reach any edge a name resolves to), or `edge_wait` has passed."""
        deadline = time.monotonic() + self.opts.edge_wait
        while True:
            nodes = [n for n in (await self.plane.nodes()).values() if n.kind in EDGE_KINDS]
            behind = [n.id for n in nodes if n.applied < revision]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise IssueError(f"edges {', '.join(sorted(behind))} did not apply the "
                                 f"challenge (revision {revision}) in "
                                 f"{self.opts.edge_wait:.0f} s")
            await asyncio.sleep(0.1)

    async def _drop_challenges(self, tokens: list[str]) -> None:
        if not tokens:
            return
        store = self.plane.store
        try:
            await store.txn([], [store.delete(self.keys.challenges + t) for t in tokens])
        except StoreError as exc:         # _tidy removes them once they expire
            log.warning("acme: could not remove challenges: %s", exc)

    async def _store_cert(self, directory: str, record: dict, info: certs.CertInfo) -> None:
        """The certificate for the edges (config/rev touched: a config change edges
        report applying), its status and an audit record, in one transaction."""
        store, keys, now = self.plane.store, self.keys, time.time()
        status = {"state": "active", "expires": info.not_after.isoformat(), "reason": "",
                  "since": now, "next_attempt": None, "attempts": 0, "serial": info.serial,
                  "issued": now,
                  "names": list(info.names)}
        await store.txn([], [
            store.put(keys.cert(directory), json.dumps(record)),
            store.put(keys.cert_status + directory, json.dumps(status)),
            store.put(keys.rev, json.dumps({"at": now, "by": "acme"})),
            store.put(f"{keys.audit}{time.time_ns():020d}-cert", json.dumps(
                {"at": now, "who": "acme", "action": "certificate",
                 "changes": [{"action": "certificate", "directory": directory,
                              "serial": info.serial, "not_after": status["expires"]}]}))])

    async def _set_status(self, directory: str, value: dict[str, Any],
                          expect: int | None = None) -> bool:
        store, key = self.plane.store, self.keys.cert_status + directory
        compare = [] if expect is None else [store.same_revision(key, expect)]
        return bool((await store.txn(compare, [store.put(key, json.dumps(value))])).succeeded)

    # --- tidying -------------------------------------------------------------------------

    async def _tidy(self, view: Any, held: dict, statuses: dict) -> None:
        """Certificates of customers gone or no longer `https: auto` are deleted (edges
        stop serving them), with their status; expired challenges too."""
        store, keys, now = self.plane.store, self.keys, time.time()
        wanted = {d for d, (doc, _) in view.customers.items() if doc.get("https") == "auto"}
        ops = [store.delete(keys.cert(d)) for d in held if d not in wanted]
        ops += [store.delete(keys.cert_status + d) for d in statuses if d not in wanted]
        for token, entry in view.snap.under(keys.challenges).items():
            if float(status_of(entry.value).get("expires") or 0) < now:
                ops.append(store.delete(keys.challenges + token))
        if ops:
            if any(d not in wanted for d in held):
                ops.append(store.put(keys.rev, json.dumps({"at": now, "by": "acme"})))
            await store.txn([], ops)


async def request_renewal(plane: ControlPlane, directory: str) -> dict[str, Any]:
    """Mark `directory`'s certificate for renewal at the issuer's next look, even if a
    failure's back-off has not run out (a key believed exposed, a CA that revoked); its
    status as it now stands."""
    from .changes import NotFound

    view = await plane.view()
    found = view.customers.get(directory)
    if found is None or found[0].get("https") != "auto":
        raise NotFound(directory)
    store, key = plane.store, plane.keys.cert_status + directory
    for _ in range(8):
        snap = await store.load(key)
        entry = snap.entries.get(key)
        status = status_of(entry.value if entry else None)
        if status.get("state") == "issuing":
            return status
        status = {**status, "renew": True, "next_attempt": None}
        resp = await store.txn([store.same_revision(key, entry.mod_revision if entry else 0)],
                               [store.put(key, json.dumps(status))])
        if resp.succeeded:
            return status
    return status


class IssueError(Exception):
    """Why an order could not be placed or finished (shown as the failed reason)."""


def describe(exc: BaseException) -> str:
    """A failure as one line an operator can act on (the CA's own words where it gave
    them: an unreachable edge, a name it will not certify)."""
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        details = []
        for authz in exc.failed_authzrs:
            for challenge in authz.body.challenges:
                if challenge.error is not None:
                    details.append(f"{authz.body.identifier.value}: "
                                   f"{challenge.error.detail or challenge.error.typ}")
        return "validation failed: " + ("; ".join(details) or "no detail from the CA")
    if isinstance(exc, errors.IssuanceError):
        exc = exc.error
    if isinstance(exc, messages.Error):
        return f"the CA refused: {exc.detail or exc.typ}"
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order in time"
    if isinstance(exc, (SealError, certs.CertError, IssueError)):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _new_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _csr(key_pem: bytes, names: tuple[str, ...]) -> bytes:
    from acme import crypto_util

    return crypto_util.make_csr(key_pem, list(names))


def _http01(order: Any, account_key: Any) -> list[tuple[str, str, Any, Any]]:
    """(token, key authorization, challenge, response) of every pending authorization."""
    from acme import challenges

    out = []
    for authz in order.authorizations:
        if authz.body.status.name == "valid":
            continue
        for challenge in authz.body.challenges:
            if isinstance(challenge.chall, challenges.HTTP01):
                response, validation = challenge.response_and_validation(account_key)
                out.append((challenge.chall.encode("token"), validation, challenge, response))
                break
        else:
            raise IssueError(f"the CA offers no http-01 challenge for "
                             f"{authz.body.identifier.value}")
    return out
