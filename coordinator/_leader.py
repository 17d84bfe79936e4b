"""Leader election in etcd, with fencing, and the gate that turns followers' callers away.

Each coordinator holds a *session*: an etcd lease (TTL ``ttl_s``, renewed every ``ttl_s/3``)
carrying its ``members/<address>`` key. It campaigns with one transaction, "create the leader
key with my lease if it does not exist". The winner's term is the key's ``create_revision``,
which is also its fence: the store compares it in every write, so once the key is gone
(lease expired, leader deposed) or belongs to a newer term, the old leader's writes fail.

A leader steps down, stopping its engine at once, when

* its lease was not renewed within its TTL (etcd unreachable, the process was paused),
* a fenced write failed, or its engine stopped for any other reason (etcd errors),
* it is asked to stop (it then revokes its lease, so a follower takes over at once).

After stepping down it revokes its lease when it can, starts a new session and campaigns
again. Followers watch the leader key and campaign as soon as it is deleted.

A member key's value is JSON ``{"address", "dashboard_url"}``: a follower's dashboard names
the leader's (:meth:`LeaderElection.dashboard_url_of`), so a browser can be sent there.

Followers stay healthy. :class:`LeaderGate` answers their ``PipelineService``, ``StreamService`` and admin calls
with ``UNAVAILABLE`` naming the leader (details ``not leader; leader is HOST:PORT`` and the
trailing metadata ``xpipe-leader``), and worker streams with one ``NotLeader`` message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import grpc
from aetcd import rpc

from xpipe._backoff import Backoff
from xpipe._proto import worker_pb2
from xpipe._sdnotify import notifier
from xpipe.telemetry._logformat import iso_time

from ._etcd_store import EtcdStore, EtcdStoreError, Fence, deposed_fence

__all__ = ["LeaderElection", "LeaderGate", "LEADER_METADATA_KEY"]

log = logging.getLogger(__name__)

#: Trailing metadata key naming the leader on a follower's UNAVAILABLE answer.
LEADER_METADATA_KEY = "xpipe-leader"
#: Methods every member answers itself, leader or not.
_ANY_MEMBER = ("/xpipe.v1.AdminService/GetClusterStatus",)
_GATED = (
    "/xpipe.v1.PipelineService/", "/xpipe.v1.WorkerService/", "/xpipe.v1.AdminService/", "/xpipe.v1.StreamService/",
    "/xpipe.v1.InsightsService/", "/xpipe.v1.AutoscaleService/",
)  # fmt: skip

#: ``on_elected(term)`` starts leading and returns an awaitable that ends when leading fails.
OnElected = Callable[[int], Awaitable[Awaitable[None]]]
#: ``on_deposed(reason)`` stops leading.
OnDeposed = Callable[[str], Awaitable[None]]


class _SessionLost(Exception):
    """The lease is gone or could not be renewed in time."""


class LeaderElection:
    """Campaigns for leadership of one cluster; see the module docs.

    Args:
        store: the cluster's etcd store (its connection, key prefix and fence are used).
        ttl_s: lease TTL in whole seconds; the leader stops scheduling when it cannot renew
            within it, and a follower takes over about this long after a leader dies.
        address: what followers tell clients and workers (``--advertise``); the
            coordinator fills in its bound address when empty.
    """

    def __init__(self, store: EtcdStore, *, ttl_s: int = 3, address: str = ""):
        if int(ttl_s) != ttl_s or ttl_s < 2:
            raise ValueError(f"lease TTL must be a whole number of seconds, at least 2; got {ttl_s}")
        self.store = store
        self.ttl_s = int(ttl_s)
        self.address = address
        #: The leader as last seen ("" when none is known) and its term (the key's create_revision).
        self.leader_address = ""
        self.term = 0
        #: True only while this coordinator leads with a started engine.
        self.is_leader = False
        self.elections_won = 0
        #: This member's dashboard (``--http-listen``), published in its member key; "" when off.
        self.dashboard_url = ""
        self._stop = asyncio.Event()
        self._lease_id = 0
        self._seen_revision = 0

    def role_line(self) -> str:
        """This member's role in one line (systemd's ``STATUS=``, shown by ``systemctl status``)."""
        if self.is_leader:
            return f"leader of cluster {self.store.cluster!r} (term {self.term}) at {self.address}"
        if self.leader_address == self.address:
            return f"elected leader of cluster {self.store.cluster!r} (term {self.term}); resuming runs"
        return f"follower at {self.address}; leader: {self.leader_address or 'none elected yet'}"

    @property
    def _member_key(self) -> bytes:
        return self.store.members_prefix + self.address.encode()

    def _member_value(self) -> bytes:
        return json.dumps({"address": self.address, "dashboard_url": self.dashboard_url}).encode()

    async def publish_dashboard(self, url: str) -> None:
        """Name this member's dashboard in its member key (now, if a session holds one, and in later sessions).

        The dashboard starts after the election's first session registered the member, so
        the key is written again under the same lease. A failure is logged: the next session
        writes it anyway.
        """
        self.dashboard_url = url
        lease_id = self._lease_id
        if not lease_id:
            return
        try:
            await self.store.call(
                lambda s: s.kv.Put(
                    rpc.PutRequest(key=self._member_key, value=self._member_value(), lease=lease_id),
                    timeout=self.store.call_timeout_s,
                ),
                what="member dashboard",
            )
        except (EtcdStoreError, grpc.aio.AioRpcError) as exc:
            log.warning("could not publish the dashboard URL in the member key: %s", exc)

    async def dashboard_url_of(self, address: str) -> str:
        """The dashboard URL the member at ``address`` published; "" if none, or etcd cannot say."""
        if not address:
            return ""
        if address == self.address:
            return self.dashboard_url
        key = self.store.members_prefix + address.encode()
        try:
            response = await self.store.call(
                lambda s: s.kv.Range(rpc.RangeRequest(key=key), timeout=1.0), what="member dashboard", retry_s=0.5
            )
        except EtcdStoreError as exc:
            log.info("leader's dashboard URL unknown: %s", exc)
            return ""
        if not response.kvs:
            return ""
        try:  # a member of the previous version wrote its bare address: no dashboard named
            url = json.loads(response.kvs[0].value).get("dashboard_url", "")
        except (ValueError, AttributeError):
            return ""
        return url if isinstance(url, str) else ""

    def stop(self) -> None:
        """Ask :meth:`run` to step down, revoke the lease and return."""
        self._stop.set()

    async def run(self, on_elected: OnElected, on_deposed: OnDeposed) -> None:
        """Hold sessions and campaign until :meth:`stop`."""
        if not self.address:
            raise ValueError("LeaderElection.address is not set")
        backoff = Backoff(initial_s=0.1, max_s=1.0)
        while not self._stop.is_set():
            try:
                await self._session(on_elected, on_deposed)
                backoff.reset()
            except (EtcdStoreError, grpc.aio.AioRpcError, _SessionLost) as exc:
                log.warning("election session ended: %s", exc)
            finally:
                await self._revoke()
            if not self._stop.is_set():
                await self._wait_stop(backoff.next_delay())

    async def _session(self, on_elected: OnElected, on_deposed: OnDeposed) -> None:
        store = self.store
        granted_at = time.monotonic()
        grant = await store.call(
            lambda s: s.lease.LeaseGrant(rpc.LeaseGrantRequest(TTL=self.ttl_s), timeout=store.call_timeout_s),
            what="lease grant",
        )
        self._lease_id = grant.ID
        keepalive = asyncio.create_task(self._keepalive(grant.ID, granted_at + grant.TTL), name="xpipe-lease")
        try:
            await store.call(
                lambda s: s.kv.Put(
                    rpc.PutRequest(key=self._member_key, value=self._member_value(), lease=grant.ID),
                    timeout=store.call_timeout_s,
                ),
                what="member registration",
            )
            while not self._stop.is_set():
                term, leader = await self._campaign(grant.ID)
                if leader == self.address and term:
                    await self._lead(term, keepalive, on_elected, on_deposed)
                    return  # a new session follows: the old lease may be half dead
                await self._follow(term, keepalive)
        finally:
            keepalive.cancel()
            try:
                await keepalive
            except (asyncio.CancelledError, _SessionLost):
                pass

    async def _campaign(self, lease_id: int) -> tuple[int, str]:
        """One campaign transaction; returns (term, leader address) as it stands after it."""
        key = self.store.leader_key
        request = rpc.TxnRequest(
            compare=[rpc.Compare(key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0)],
            success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=self.address.encode(), lease=lease_id))],
            failure=[rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        response = await self.store.call(
            lambda s: s.kv.Txn(request, timeout=self.store.call_timeout_s), what="campaign"
        )
        if response.succeeded:
            term, leader = response.header.revision, self.address
        else:
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                return 0, ""
            kv = kvs[0]
            if kv.lease != lease_id and kv.value == self.address.encode():
                # Left by an earlier session of ours (we restarted, or stepped down while etcd was
                # away): nobody leads through it, so give it back instead of waiting out its TTL.
                log.info("revoking our stale leader key (lease %x, term %d)", kv.lease, kv.create_revision)
                await self.store.call(
                    lambda s: s.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=kv.lease), timeout=1.0),
                    what="stale lease revoke",
                )
                return 0, ""
            # Our own key of this session (a blip shorter than the lease): we still lead that term.
            leader = self.address if kv.lease == lease_id else kv.value.decode()
            term = kv.create_revision
        changed = (term, leader) != (self.term, self.leader_address)
        self.term, self.leader_address = term, leader
        if changed:
            log.info("leader of cluster %r is %s (term %d)", self.store.cluster, leader, term)
            notifier().status(self.role_line())
        self._seen_revision = response.header.revision
        return term, leader

    async def _lead(self, term: int, keepalive: asyncio.Task, on_elected: OnElected, on_deposed: OnDeposed) -> None:
        store = self.store
        store.fence = Fence(store.leader_key, term)
        log.info("elected leader of cluster %r (term %d) at %s", store.cluster, term, iso_time(time.time()))
        try:
            engine_done = await on_elected(term)
        except BaseException:
            store.fence = deposed_fence(store.leader_key)
            await on_deposed("could not start leading")
            raise
        self.is_leader = True
        self.elections_won += 1
        notifier().status(self.role_line())
        engine_task = asyncio.ensure_future(engine_done)
        stop_task = asyncio.ensure_future(self._stop.wait())
        reason = ""
        try:
            done, _ = await asyncio.wait({keepalive, engine_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            if stop_task in done:
                reason = "coordinator stopping"
            elif keepalive in done:
                exc = keepalive.exception() if not keepalive.cancelled() else None
                reason = f"lease lost: {exc}"
            else:
                exc = engine_task.exception() if not engine_task.cancelled() else None
                reason = f"engine stopped: {exc!r}" if exc else "engine stopped"
        finally:
            self.is_leader = False
            store.fence = deposed_fence(store.leader_key)
            if self.leader_address == self.address:
                self.leader_address = ""
            log.warning("stepping down as leader of cluster %r (term %d): %s", store.cluster, term, reason)
            notifier().status(self.role_line())
            stop_task.cancel()
            await on_deposed(reason or "cancelled")
            if not engine_task.done():
                engine_task.cancel()
            await asyncio.gather(engine_task, stop_task, return_exceptions=True)

    async def _follow(self, term: int, keepalive: asyncio.Task) -> None:
        """Wait until the leader key is deleted, the session ends, or it is time to look again."""
        watch = asyncio.create_task(self._wait_leader_gone(self._seen_revision))
        stop_task = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {watch, keepalive, stop_task}, timeout=5 * self.ttl_s, return_when=asyncio.FIRST_COMPLETED
            )
            if keepalive in done:
                keepalive.result()  # raises _SessionLost
            if watch in done and not watch.cancelled() and watch.exception() is not None:
                log.info("watch of the leader key failed: %s", watch.exception())
                await self._wait_stop(0.2)
        finally:
            for task in (watch, stop_task):
                task.cancel()
            await asyncio.gather(watch, stop_task, return_exceptions=True)

    async def _wait_leader_gone(self, seen_revision: int) -> None:
        key = self.store.leader_key
        stop_sending = asyncio.Event()

        async def requests():
            yield rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=key, start_revision=seen_revision + 1, filters=[rpc.WatchCreateRequest.NOPUT]
                )
            )
            await stop_sending.wait()  # etcd ends a watch stream whose client half-closes

        call = self.store.stubs().watch.Watch(requests())
        try:
            async for response in call:
                if response.canceled or response.compact_revision or response.events:
                    return
        finally:
            stop_sending.set()
            call.cancel()

    async def _keepalive(self, lease_id: int, expires_at: float) -> None:
        """Renew the lease every TTL/3; raise _SessionLost when it expired or may have."""
        store = self.store
        while True:
            now = time.monotonic()
            if now >= expires_at:
                raise _SessionLost(f"lease {lease_id:x} not renewed within its {self.ttl_s}s TTL")
            sent = now
            try:
                reply = await asyncio.wait_for(self._refresh(lease_id), timeout=max(0.05, expires_at - sent))
            except (TimeoutError, grpc.aio.AioRpcError) as exc:
                if isinstance(exc, grpc.aio.AioRpcError):
                    log.info("lease renewal failed: %s %s", exc.code().name, exc.details())
                    if len(store.endpoints) > 1:
                        store._current = (store._current + 1) % len(store.endpoints)
                await asyncio.sleep(min(0.1, max(0.0, expires_at - time.monotonic())))
                continue
            if reply is None or reply.TTL <= 0:
                raise _SessionLost(f"lease {lease_id:x} expired")
            expires_at = sent + reply.TTL
            await asyncio.sleep(min(self.ttl_s / 3, max(0.0, expires_at - time.monotonic())))

    async def _refresh(self, lease_id: int) -> rpc.LeaseKeepAliveResponse | None:
        call = self.store.stubs().lease.LeaseKeepAlive(
            iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.store.call_timeout_s
        )
        async for reply in call:
            return reply
        return None

    async def _revoke(self) -> None:
        """Give the lease back (deleting our leader and member keys) if etcd answers soon."""
        lease_id, self._lease_id = self._lease_id, 0
        if not lease_id:
            return
        try:
            await self.store.call(
                lambda s: s.lease.LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=1.0),
                what="lease revoke",
                retry_s=1.0,
            )
        except EtcdStoreError as exc:
            log.info("could not revoke lease %x (it expires by itself): %s", lease_id, exc)

    async def _wait_stop(self, timeout_s: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=timeout_s)
        except TimeoutError:
            pass

    async def status(self) -> tuple[str, list[str], int]:
        """(leader address, member addresses, term), read from etcd; the last seen if it is down."""
        store = self.store
        members_prefix = store.members_prefix
        request = rpc.TxnRequest(
            success=[
                rpc.RequestOp(request_range=rpc.RangeRequest(key=store.leader_key)),
                rpc.RequestOp(
                    request_range=rpc.RangeRequest(
                        key=members_prefix, range_end=members_prefix[:-1] + b"0", keys_only=True
                    )
                ),
            ]
        )
        try:
            response = await store.call(lambda s: s.kv.Txn(request, timeout=1.0), what="cluster status", retry_s=0.5)
        except EtcdStoreError as exc:
            log.info("cluster status from memory: %s", exc)
            return self.leader_address, [self.address], self.term
        leader_kvs, member_kvs = (r.response_range.kvs for r in response.responses)
        members = sorted(kv.key[len(members_prefix) :].decode() for kv in member_kvs)
        if not leader_kvs:
            return "", members, self.term
        return leader_kvs[0].value.decode(), members, leader_kvs[0].create_revision


class LeaderGate(grpc.aio.ServerInterceptor):
    """Turn away calls a follower must not serve, naming the leader; see the module docs."""

    def __init__(self, election: LeaderElection):
        self.election = election

    def _hint(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        leader = self.election.leader_address
        if leader and leader != self.election.address:
            return f"not leader; leader is {leader}", ((LEADER_METADATA_KEY, leader),)
        return "not leader; no leader is elected yet", ()

    async def _refuse(self, context) -> None:
        details, metadata = self._hint()
        await context.abort(grpc.StatusCode.UNAVAILABLE, details, trailing_metadata=metadata)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or not method.startswith(_GATED) or method in _ANY_MEMBER:
            return handler
        gate = self
        election = self.election
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request, context):
                if not election.is_leader:
                    await gate._refuse(context)
                try:
                    return await inner(request, context)
                except Exception as exc:
                    # The leader stepped down under this call (its engine stopped): send the caller on.
                    if election.is_leader or isinstance(exc, grpc.aio.AbortError):
                        raise
                    await gate._refuse(context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def unary_stream(request, context):
                if not election.is_leader:
                    await gate._refuse(context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_bidi = handler.stream_stream

            async def stream_stream(requests, context):
                if not election.is_leader:
                    # Workers read this and connect to the leader next.
                    leader = election.leader_address if election.leader_address != election.address else ""
                    yield worker_pb2.CoordinatorMessage(not_leader=worker_pb2.NotLeader(leader_address=leader))
                    return
                async for item in inner_bidi(requests, context):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler
